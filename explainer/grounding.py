"""The grounding check: an explanation may only say what its fact table supports.

Lexical and strict on purpose. Every content word of the text must occur in some fact (or be one of
the few connective words an explanation needs), every number must occur in a fact, and the text
must point at the shopper's own history (a history item, or a brand/category shared with one).
A paraphrase that uses a new word fails; that costs a template sentence, never a false claim.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from whyrec.schema import FactKind, FactTable

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
    """Plural and possessive folding, enough to match "lamps" to "lamp" and "boxes" to "box"."""
    word = word.replace("’", "'").removesuffix("'s")
    if len(word) <= 3:
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("ses", "xes", "zes", "ches", "shes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _numbers(text: str) -> set[str]:
    return {n.replace(",", "") for n in _NUMBER.findall(text)}


_CONNECTIVE_STEMS = frozenset(_stem(w) for w in CONNECTIVES)


def check_grounding(text: str, table: FactTable) -> GroundingVerdict:
    if not text.strip():
        return GroundingVerdict(False, "empty text")
    fact_text = " ".join(f"{f.text} {f.value}" for f in table.facts)
    supported = {_stem(w) for w in _words(fact_text)} | _CONNECTIVE_STEMS

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
    """The text names a history item: enough of the words that set its name apart from the
    recommended item's own name and brand (so "another Lumora lamp" alone does not count)."""
    text_words = _content_stems(text)
    own = set()
    for fact in table.facts:
        if fact.kind in (FactKind.ITEM_TITLE, FactKind.ITEM_BRAND):
            own |= _content_stems(fact.value)
    for fact in table.facts:
        if fact.kind is not FactKind.HISTORY_ITEM:
            continue
        name = _content_stems(fact.value)
        distinctive = name - own or name
        if distinctive and len(text_words & distinctive) >= min(2, len(distinctive)):
            return True
    return False


def _content_stems(text: str) -> set[str]:
    return {_stem(w) for w in _words(text)} - _CONNECTIVE_STEMS


def cited_facts(text: str, table: FactTable) -> list[str]:
    """Ids of the facts whose values the text uses (for models that do not list their sources)."""
    text_words = _content_stems(text)
    ids = []
    for fact in table.facts:
        value_words = _content_stems(fact.value)
        if value_words and len(text_words & value_words) >= min(2, len(value_words)):
            ids.append(fact.fact_id)
    return ids
