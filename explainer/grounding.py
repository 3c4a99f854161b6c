"""The grounding check: an explanation may only say what its fact table supports.

Lexical and strict on purpose. Every content word of the text must occur in some fact (or be one of
the few connective words an explanation needs), every number must occur in a fact, every name (a
run of capitalised words) must occur whole in a single fact, so that two real names cannot be
spliced into an invented product, and the text must name an item from the shopper's own history.
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
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9'’&.\-/]*")
# Lower-case words that may sit inside a product name ("Binder with Extra Durable Hinge").
_NAME_JOINERS = frozenset({"with", "and", "of", "for", "the", "in", "on", "&", "-", "x"})
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

    spliced = [name for name in _names(text) if not any(_norm(name) in _norm(f"{f.text} {f.value}") for f in table.facts)]
    unsupported += tuple(f'"{name}"' for name in spliced)
    misplaced = _history_names_offered_as_the_item(text, table)
    if misplaced and not unsupported:
        return GroundingVerdict(False, f'presents "{misplaced[0]}", an item from the history, as the recommendation', (), _cites_history(text, table))

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


_HISTORY_VERBS = frozenset({"bought", "purchased", "looked", "viewed", "clicked", "added", "ordered", "like", "liked", "carted"})


def _history_names_offered_as_the_item(text: str, table: FactTable) -> list[str]:
    """Names of history items (and not of the recommended item) in a clause with no history verb:
    "we suggest the <history item>" says the shopper is offered what they already have."""
    item_names = [_norm(f.value) for f in table.facts if f.kind is FactKind.ITEM_TITLE]
    history_names = [_norm(f.value) for f in table.facts if f.kind is FactKind.HISTORY_ITEM]
    found = []
    for clause in re.split(r"[,;:.!?]\s", text):
        if set(_words(clause)) & _HISTORY_VERBS:
            continue
        for name in _names(clause):
            n = _norm(name)
            if any(n in h for h in history_names) and not any(n in i for i in item_names):
                found.append(name)
    return found


def _names(text: str) -> list[str]:
    """Runs of two or more capitalised words (joiners allowed inside), minus a leading connective
    such as the "Because" that opens a sentence."""
    names, run = [], []

    def close() -> None:
        while run and (run[-1].lower() in _NAME_JOINERS):
            run.pop()
        while run and run[0].lower() in CONNECTIVES:
            run.pop(0)
        if len(run) >= 2:
            names.append(" ".join(run))
        run.clear()

    for token in _TOKEN.findall(text):
        if token[0].isupper() or token[0].isdigit():
            run.append(token)
        elif run and token.lower() in _NAME_JOINERS:
            run.append(token)
        else:
            close()
    close()
    return names


def _norm(text: str) -> str:
    return " " + " ".join(re.findall(r"[a-z0-9]+", text.lower())) + " "


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
