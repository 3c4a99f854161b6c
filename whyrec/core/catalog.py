"""The data model every stage shares: items, interaction events and the catalog that holds them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Mapping

from whyrec.core.errors import UnknownItem, UnknownShopper

AttributeValue = str | int | float | bool


class EventKind(str, Enum):
    VIEW = "view"
    CLICK = "click"
    CART = "cart"
    PURCHASE = "purchase"


@dataclass(frozen=True)
class Item:
    item_id: str
    title: str
    brand: str | None = None
    categories: tuple[str, ...] = ()
    description: str = ""
    price: float | None = None
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)

    @property
    def category(self) -> str | None:
        """The most specific category, or None."""
        return self.categories[-1] if self.categories else None

    def text(self, description_chars: int = 200) -> str:
        """One line for the encoders: title, brand, category path and the start of the description."""
        parts = [self.title]
        if self.brand:
            parts.append(f"brand: {self.brand}")
        if self.categories:
            parts.append("category: " + " > ".join(self.categories))
        if self.description and description_chars > 0:
            parts.append(self.description[:description_chars])
        return " | ".join(parts)


@dataclass(frozen=True)
class Interaction:
    user_id: str
    item_id: str
    kind: EventKind = EventKind.PURCHASE
    timestamp: datetime | None = None


class Catalog:
    """Items plus every shopper's events, in time order. Built whole by a loader, never half-way."""

    def __init__(self, name: str, items: Mapping[str, Item], interactions: list[Interaction]):
        self.name = name
        self.items: dict[str, Item] = dict(items)
        self.interactions = list(interactions)
        self._events: dict[str, list[Interaction]] = {}
        for event in self.interactions:
            self._events.setdefault(event.user_id, []).append(event)

    @property
    def users(self) -> list[str]:
        return list(self._events)

    def item(self, item_id: str) -> Item:
        try:
            return self.items[item_id]
        except KeyError:
            raise UnknownItem(item_id) from None

    def events(self, user_id: str) -> list[Interaction]:
        try:
            return self._events[user_id]
        except KeyError:
            raise UnknownShopper(user_id) from None

    def sequence(self, user_id: str) -> list[str]:
        """The shopper's item ids in time order, each once, at its most recent position."""
        return dedupe_keep_last(e.item_id for e in self.events(user_id))

    def purchased(self, user_id: str) -> set[str]:
        return {e.item_id for e in self.events(user_id) if e.kind is EventKind.PURCHASE}

    def __repr__(self) -> str:
        return f"Catalog({self.name!r}, items={len(self.items)}, users={len(self._events)}, interactions={len(self.interactions)})"


def dedupe_keep_last(item_ids) -> list[str]:
    seen: dict[str, None] = {}
    for item_id in item_ids:
        seen.pop(item_id, None)
        seen[item_id] = None
    return list(seen)


def fingerprint(catalog: Catalog, *, with_interactions: bool = True) -> str:
    """A short content hash: caches keyed by it are reused only for the same data."""
    import hashlib

    digest = hashlib.sha1()
    for item_id in sorted(catalog.items):
        digest.update(catalog.items[item_id].text(description_chars=10_000).encode())
        digest.update(b"\0" + item_id.encode() + b"\0")
    if with_interactions:
        for event in catalog.interactions:
            digest.update(f"{event.user_id}\0{event.item_id}\0{event.kind.value}\n".encode())
    return digest.hexdigest()[:16]


_STRENGTH = {EventKind.VIEW: 0, EventKind.CLICK: 1, EventKind.CART: 2, EventKind.PURCHASE: 3}


def strongest_kind(events: list[Interaction], item_id: str) -> EventKind:
    """The most committed thing the shopper did with the item (a purchase beats a view)."""
    kinds = [e.kind for e in events if e.item_id == item_id]
    return max(kinds, key=_STRENGTH.__getitem__) if kinds else EventKind.VIEW
