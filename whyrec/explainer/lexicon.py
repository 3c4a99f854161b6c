"""Words as the checks compare them: tokens, stems, and the few words an explanation may use that
no fact has to contain."""

from __future__ import annotations

import re

from whyrec.core.catalog import EventKind

# Words that carry no product claim: grammar, the framing of a recommendation and of a ranking.
CONNECTIVES = frozenset(
    """
    a an the this that these those it its it's itself you your yours we our us i me my they them their
    is are was were be been being has have had do does did
    and or but so as because since if then than also too both either just only
    to of in on at by for from with without into about after before like as
    not no more most other another same similar similarly else something one ones
    here there why how what which who when while
    recommend recommended recommending recommendation suggest suggested suggesting suggestion picked pick
    see seeing shown showing show saw try consider
    bought buy buying purchased purchase purchases viewed view looked look looking clicked click
    added add cart carted ordered order previously recently earlier before last past already
    based history activity interest interests shopping
    item items product products brand brands category categories made maker
    may might could would will can should
    matches match fits fit goes go pairs pair well together along
    ranked rank ranks ranking instead candidates candidate place position
    moved moves move lifts lift lifted raises raise raised drop drops dropped fall falls rise rises higher lower up down
    says say said calls call called describes described describe seller
    """.split()
)

WORD = re.compile(r"[a-z0-9]+(?:['’][a-z]+)?")
NUMBER = re.compile(r"\d+(?:[.,/]\d+)*")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# "I.D.", "No.", "Inc." end an abbreviation, not a sentence.
_ABBREVIATION = re.compile(r"(?:\b[A-Za-z]\.|\b(?:No|Nos|Inc|Co|Corp|Ltd|Mr|Mrs|Ms|Dr|St|vs|approx|Vol|Pt|ft|oz|lb|lbs|in|Jr|Sr)\.)$")
CLAUSE = re.compile(r"[,;:!?()]\s*|\s[-–—]\s")

# Event verbs, mapped to the verb the history facts use for that event.
EVENT_VERBS = {
    "bought": "bought", "purchased": "bought", "ordered": "bought", "buy": "bought",
    "looked": "looked", "viewed": "looked",
    "clicked": "clicked",
    "added": "added", "carted": "added",
}
VERB_EVENTS = {"bought": EventKind.PURCHASE, "looked": EventKind.VIEW, "clicked": EventKind.CLICK, "added": EventKind.CART}
EVENT_WORDS = {EventKind.PURCHASE: "bought", EventKind.VIEW: "looked at", EventKind.CLICK: "clicked on", EventKind.CART: "added to your cart"}


def sentences(text: str) -> list[str]:
    """The text's sentences: a sentence ends at . ! ? and a space, but not inside a quoted name
    or after an abbreviation ("3/16 I.D. x 5/16 O.D. Tubing")."""
    out, start = [], 0
    for match in _SENTENCE_END.finditer(text):
        head = text[start : match.start()]
        if text[: match.start()].count('"') % 2 or _ABBREVIATION.search(head):
            continue
        out.append(head)
        start = match.end()
    out.append(text[start:])
    return [s for s in out if s.strip()]


def stem(word: str) -> str:
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


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def numbers(text: str) -> set[str]:
    return {n.replace(",", "") for n in NUMBER.findall(text)}


CONNECTIVE_STEMS = frozenset(stem(w) for w in CONNECTIVES)


def vocabulary(texts: list[str]) -> set[str]:
    return {stem(w) for t in texts for w in words(t)}


def name_tokens(text: str) -> list[str]:
    return [stem(w) for w in re.findall(r"[a-z0-9]+", text.lower())]


def norm(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def content_stems(text: str) -> set[str]:
    return {stem(w) for w in words(text)} - CONNECTIVE_STEMS
