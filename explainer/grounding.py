"""The grounding check: an explanation may only say what its fact table supports.

Lexical and strict on purpose. Every content word of the text must occur in some fact (or be one of
the few connective words an explanation needs), every number must occur in a fact, and the text
must point at the shopper's own history (a history item, or a brand/category shared with one).
A paraphrase that uses a new word fails; that costs a template sentence, never a false claim.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from whyrec.schema import FactTable

# Words that carry no product claim: grammar, the framing of a recommendation, and event verbs.
CONNECTIVES = frozenset(
    """
    a an the this that these those it its it's itself you your yours we our us i me my
    is are was were be been being has have had do does did
    and or but so as because since if then than also too both either just only
    to of in on at by for from with without into about after before like as
    not no more most other another same similar similarly else something one ones
    here there why how what which who when while
    recommend recommended recommending recommendation suggest suggested suggesting suggestion picked pick
    see seeing shown showing show saw
    bought buy buying purchased purchase purchases viewed view looked look looking clicked click
    added add cart carted ordered order previously recently earlier before last past already
    based history activity interest interests shopping
    item items product products brand brands category categories made maker
    may might could would will can should
    matches match fits fit goes go pairs pair well together along
    ranked rank ranks instead candidates candidate
    """.split()
)

_WORD = re.compile(r"[a-z0-9]+(?:['’][a-z]+)?")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


@dataclass(frozen=True)
class GroundingVerdict:
    passed: bool
    reason: str  # "ok", or what was unsupported
    unsupported: tuple[str, ...] = ()
    cites_history: bool = False


def _stem(word: str) -> str:
    word = word.replace("’", "'")
    for suffix in ("'s", "ies", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return word


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _numbers(text: str) -> set[str]:
    return {n.replace(",", "") for n in _NUMBER.findall(text)}


def check_grounding(text: str, table: FactTable) -> GroundingVerdict:
    if not text.strip():
        return GroundingVerdict(False, "empty text")
    fact_text = " ".join(f"{f.text} {f.value}" for f in table.facts)
    supported = {_stem(w) for w in _words(fact_text)} | {_stem(w) for w in CONNECTIVES}

    unsupported_numbers = sorted(_numbers(text) - _numbers(fact_text))
    unsupported_words = []
    for word in _words(text):
        if word.isdigit() or _stem(word) in supported:
            continue
        if word not in unsupported_words:
            unsupported_words.append(word)
    unsupported = tuple(unsupported_numbers) + tuple(w for w in unsupported_words if w not in unsupported_numbers)

    cites_history = _cites_history(text, table)
    if unsupported:
        return GroundingVerdict(False, "not in the facts: " + ", ".join(unsupported), unsupported, cites_history)
    if not cites_history:
        return GroundingVerdict(False, "does not name anything from the shopper's history", (), False)
    return GroundingVerdict(True, "ok", (), True)


def _cites_history(text: str, table: FactTable) -> bool:
    """The text names a history fact's value: most of a history item's name, or a shared brand/category."""
    text_words = {_stem(w) for w in _words(text)} - {_stem(w) for w in CONNECTIVES}
    for fact in table.history_facts():
        value_words = {_stem(w) for w in _words(fact.value)} - {_stem(w) for w in CONNECTIVES}
        if not value_words:
            continue
        needed = min(2, len(value_words))
        if len(text_words & value_words) >= needed:
            return True
    return False


def cited_facts(text: str, table: FactTable) -> list[str]:
    """Ids of the facts whose values the text uses (for models that do not list their sources)."""
    text_words = {_stem(w) for w in _words(text)} - {_stem(w) for w in CONNECTIVES}
    ids = []
    for fact in table.facts:
        value_words = {_stem(w) for w in _words(fact.value)} - {_stem(w) for w in CONNECTIVES}
        if value_words and len(text_words & value_words) >= min(2, len(value_words)):
            ids.append(fact.fact_id)
    return ids
