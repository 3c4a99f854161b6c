"""Name slots: the prompt shows the recommended item and the history item as two short slots
instead of their catalog titles, and the model's answer gets the exact titles back before the
check reads it.

Catalog titles are long and odd ("Gardner Bender SK-832T Electricians Screw Kit", "HICTOP 1.75mm
Black PLA"): a 135M model copying them wrote "Gardener", "HHETHOP", or the history item's title
where the recommended item's belonged, and each such answer failed the check. With slots it
writes the sentence; the names in it are the catalog's own.
"""

from __future__ import annotations

import re

from whyrec.core.schema import Fact, FactKind

HISTORY_SLOT = "<history item>"
ITEM_SLOT = "<recommended item>"


def slot_names(shown: tuple[Fact, ...]) -> dict[str, str]:
    """slot -> title for the facts a prompt shows: the recommended item, and the history item when
    the prompt tells exactly one."""
    slots = {}
    item = next((f.value for f in shown if f.kind is FactKind.ITEM_TITLE), None)
    history = list(dict.fromkeys(f.value for f in shown if f.kind is FactKind.HISTORY_ITEM))
    if item:
        slots[ITEM_SLOT] = item
    if len(history) == 1 and history[0] != item:
        slots[HISTORY_SLOT] = history[0]
    return slots


def with_slots(text: str, slots: dict[str, str]) -> str:
    """The text with each title (quoted or not) written as its slot; the longer title first, so a
    title inside another is not cut out of it."""
    for slot, name in sorted(slots.items(), key=lambda s: -len(s[1])):
        text = text.replace(f'"{name}"', slot).replace(name, slot)
    return text


def fill_slots(text: str, slots: dict[str, str]) -> str:
    """The model's text with the titles back: in quotes where the slot stands alone, bare after
    "the" ("the <history item> you bought" -> "the Lumora Clip Lamp you bought")."""
    for slot, name in slots.items():
        text = text.replace(f'"{slot}"', slot)
        text = re.sub(rf"\b([Tt]he) {re.escape(slot)}", lambda m: f"{m.group(1)} {name}", text)
        text = text.replace(slot, f'"{name}"')
    return text
