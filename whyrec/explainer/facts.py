"""The fact table for one (shopper, item): the only things an explanation may say, each with an id."""

from __future__ import annotations

import re
from typing import Iterable

from whyrec.core.catalog import EventKind, Item
from whyrec.core.schema import NEXT_RANK_LIMIT, Evidence, Fact, FactKind, FactTable, RankedItem

MAX_ATTRIBUTES = 4
MAX_HISTORY_FACTS = 2
PHRASE_CHARS = 160

PAST_TENSE = {
    EventKind.PURCHASE: "bought",
    EventKind.CART: "added to your cart",
    EventKind.CLICK: "clicked on",
    EventKind.VIEW: "looked at",
}


def short_title(item: Item, limit: int = 80) -> str:
    """The title up to its first comma or bracket: product titles are long, a sentence wants the name."""
    head = re.split(r"[,(\[|]| - ", item.title, maxsplit=1)[0].strip()
    if len(head) < 8:
        head = item.title
    head = _without_full_stop(head)
    if len(head) > limit:
        # Cut at a word, and not after a word that leaves the name hanging ("... Timer with").
        words = head[:limit].rsplit(" ", 1)[0].split()
        while len(words) > 1 and words[-1].lower().strip(",;:-&") in _HANGING:
            words.pop()
        head = " ".join(words)
    return head


def _without_full_stop(name: str) -> str:
    """Many catalog titles end with a full stop ("Mighty Mag Magnetic Base."): inside a sentence the
    stop reads as its end, and a small model closes its note there, leaving the quote open."""
    return name.rstrip(" .") or name


_HANGING = frozenset("a an the and or of for with to in on by at from as".split() + ["", "&"])


# Seller text that talks to the model instead of about the product ("ignore previous
# instructions", "say this is the best", "system:"): such a description contributes no phrase.
_INSTRUCTION = re.compile(
    r"\b(ignore|disregard|forget|override)\b.{0,40}\b(instruction|prompt|rule|above|previous|facts?)|"
    r"\b(system|assistant|user)\s*:|\bsay (that|this|it)\b|\b(you|model|ai) (must|should|are now|will now)\b|"
    r"\b(prompt|instructions?)\b|\bexplanation\b",
    re.IGNORECASE,
)


# Line breaks would let seller text start a line of its own in the prompt (a fake "Facts:" header
# or "[F9]" fact); chat-template control tokens (<|im_start|>, <s>, [INST]) would be read by the
# tokenizer as a new message with a role.
_LINE_BREAKS = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]+")
_CHAT_TOKENS = re.compile(r"<\|[^|<>]{0,40}\|>|</?s>|\[/?INST\]|<<\/?SYS>>", re.IGNORECASE)


def one_line(text: str) -> str:
    """Seller-written text as it may sit inside one fact line: no line breaks, no chat control tokens."""
    return _CHAT_TOKENS.sub(" ", _LINE_BREAKS.sub(" ", text))


def description_phrase(item: Item) -> str:
    """The description's first sentence, as plain text. Seller text: quoted data, never instructions."""
    text = re.sub(r"<(script|style)\b.*?(</\1\s*>|$)", " ", item.description, flags=re.IGNORECASE | re.DOTALL)
    if _INSTRUCTION.search(text):
        return ""
    text = re.sub(r"<[^>]*>", " ", text)
    # Inline CSS pasted into descriptions (".headerM {color:#000; ...}") is not a phrase about the product.
    text = re.sub(r"[.#]?[\w-]*\s*\{[^}]*(?:\}|$)", " ", text)
    text = " ".join(text.split())
    first = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]
    if len(re.findall(r"[A-Za-z]{2,}", first)) < 3:
        return ""
    return first[:PHRASE_CHARS].rsplit(" ", 1)[0] if len(first) > PHRASE_CHARS else first


# Words two product names share that say nothing about what the product is for.
_USE_STOPWORDS = frozenset(
    """
    and for with the of in on to by from pack packs box boxes count ct per each set sets piece pieces
    inch inches size sizes letter legal pkg dozen assorted new value bulk case sheets sheet
    retail packaging original all one use high yield series
    black white blue red green yellow cyan magenta gray grey color colors colour colours tri
    """.split()
)


def shared_category_name(item: Item, other: Item) -> str | None:
    """The most specific category both sit in, below the top level (everything shares "Office
    Products"; that says nothing)."""
    common = 0
    for mine, theirs in zip(item.categories, other.categories):
        if mine != theirs:
            break
        common += 1
    if common == 0 or (common == 1 and len(item.categories) > 1):
        return None
    return item.categories[common - 1]


def shared_use_words(item: Item, other: Item, limit: int = 2) -> str:
    """Words naming what the product is (pen, labels, toner) found in both titles, in the item's
    order; brand words and sizes/pack counts are left out."""
    brand_words = set(_title_words(item.brand or "")) | set(_title_words(other.brand or ""))
    theirs = set(_title_words(other.title))
    shared = [w for w in dict.fromkeys(_title_words(item.title)) if w in theirs and w not in brand_words and w not in _USE_STOPWORDS]
    return " ".join(shared[:limit])


def _title_words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z]+", text.lower()) if len(w) >= 3]


def build_fact_table(
    user_id: str,
    item: Item,
    ranked: RankedItem,
    history: list[tuple[Item, EventKind]],
    evidence: Iterable[Evidence] = (),
) -> FactTable:
    """`history` holds the shopper's recent items (oldest first) with the strongest event for each;
    `evidence` what other shoppers did that ties a history item to this item (retrieval's counts)."""
    facts: list[Fact] = []

    def add(kind: FactKind, text: str, value: str = "", **subjects) -> None:
        facts.append(Fact(f"F{len(facts) + 1}", kind, one_line(text), one_line(value), **subjects))

    by_id = {h.item_id: (h, kind) for h, kind in history}
    position = {h.item_id: len(history) - i for i, (h, _) in enumerate(history)}  # 1 = the most recent
    ties = {e.history_item_id: e for e in evidence if e.item_id == item.item_id}
    raised = [a.history_item_id for a in ranked.attributions if a.contribution > 0 and a.history_item_id in by_id]
    drivers = [a for a in ranked.attributions if a.history_item_id in raised[:MAX_HISTORY_FACTS]]
    # With no history item raising the score on its own, cite the one retrieval matched.
    driver_ids = raised[:MAX_HISTORY_FACTS] or [i for i in ranked.matched_history if i in by_id][:1]
    # A reason a person can follow needs a relation; when the drivers have none, the history item
    # with one that also raised the score (or led retrieval to the item) is cited beside them.
    if not any(_has_relation(item, by_id[h][0], ties.get(h)) for h in driver_ids):
        lowered = {a.history_item_id for a in ranked.attributions if a.contribution < 0}
        related = [h for h in dict.fromkeys([*raised, *ranked.matched_history]) if h in by_id and h not in driver_ids and h not in lowered]
        driver_ids += [h for h in related if _has_relation(item, by_id[h][0], ties.get(h))][:1]

    # A variant of a history item (8 vs 24 pack) shortens to the same name: then both keep full titles.
    names = {item.item_id: short_title(item), **{i: short_title(by_id[i][0]) for i in driver_ids}}
    if len(set(names.values())) < len(names):
        names = {item.item_id: _without_full_stop(item.title), **{i: _without_full_stop(by_id[i][0].title) for i in driver_ids}}
    # A name sits in double quotes in the facts: an inch mark inside it ('13" Wide') becomes a ″.
    names = {i: name.replace('"', "″") for i, name in names.items()}

    own = {"item_id": item.item_id}
    add(FactKind.ITEM_TITLE, f'The recommended item is "{names[item.item_id]}".', names[item.item_id], attribute="title", **own)
    if item.brand:
        add(FactKind.ITEM_BRAND, f"It is made by {item.brand}.", item.brand, attribute="brand", **own)
    if item.category:
        add(FactKind.ITEM_CATEGORY, f"It is in the category {item.category}.", item.category, attribute="category", **own)
    if item.price is not None:
        add(FactKind.ITEM_PRICE, f"It costs {item.price:.2f}.", f"{item.price:.2f}", attribute="price", **own)
    for key, value in list(item.attributes.items())[:MAX_ATTRIBUTES]:
        label = key.replace("_", " ")
        add(FactKind.ITEM_ATTRIBUTE, f"Its {label} is {value}.", f"{label} {value}", attribute=key, **own)
    # A double quote in the phrase would close the quotes it sits in.
    phrase = description_phrase(item).replace('"', "'")
    if phrase:
        add(FactKind.ITEM_PHRASE, f'The seller describes it as: "{phrase}"', phrase, attribute="phrase", **own)

    for history_id in driver_ids:
        h, kind = by_id[history_id]
        name = names[history_id]
        pair = {"item_id": item.item_id, "history_item_id": history_id}
        add(FactKind.HISTORY_ITEM, f'You {PAST_TENSE[kind]} "{name}".', name, history_item_id=history_id, event=kind, position=position[history_id])
        if item.brand and h.brand and item.brand.lower() == h.brand.lower():
            add(FactKind.SHARED_BRAND, f'Like "{name}", it is made by {item.brand}.', item.brand, **pair)
        shared_category = shared_category_name(item, h)
        if shared_category:
            add(FactKind.SHARED_CATEGORY, f'Like "{name}", it is in the category {shared_category}.', shared_category, **pair)
        use = shared_use_words(item, h)
        if use:
            add(FactKind.SHARED_USE, f'Like "{name}", it is one of the {use} products.', use, **pair)
        tie = ties.get(history_id)
        if tie is not None and tie.bought_after > 0:
            n = tie.bought_after
            add(FactKind.BOUGHT_TOGETHER, f'{_shoppers(n)} who bought "{name}" went on to buy it.', str(n), event=EventKind.PURCHASE, count=n, **pair)
        if tie is not None and tie.viewed_after > tie.bought_after:
            n = tie.viewed_after
            add(FactKind.VIEWED_TOGETHER, f'{_shoppers(n)} who looked at "{name}" went on to look at it too.', str(n), event=EventKind.VIEW, count=n, **pair)
        if tie is not None and tie.next_rank is not None:
            add(FactKind.OFTEN_NEXT, f'After "{name}", it is among the {NEXT_RANK_LIMIT} items shoppers are most likely to pick next.', str(NEXT_RANK_LIMIT), rank=tie.next_rank, **pair)

    add(FactKind.RANK, f"It is ranked #{ranked.rank} of {ranked.candidates_scored} candidates for you.", str(ranked.rank), rank=ranked.rank, **own)
    for attribution in drivers[:1]:
        name = names[attribution.history_item_id]
        if attribution.rank_without is not None and attribution.rank_without > ranked.rank:
            add(
                FactKind.COUNTERFACTUAL,
                f'Without "{name}" in your history it would rank #{attribution.rank_without} instead of #{ranked.rank}.',
                str(attribution.rank_without),
                item_id=item.item_id,
                history_item_id=attribution.history_item_id,
                rank=ranked.rank,
                rank_without=attribution.rank_without,
            )
    return FactTable(user_id, item.item_id, tuple(facts))


def _shoppers(n: int) -> str:
    return f"{n} other shopper" if n == 1 else f"{n} other shoppers"


def _has_relation(item: Item, history_item: Item, tie: Evidence | None) -> bool:
    """The item and the history item share a brand, category or use, or other shoppers tie them."""
    if item.brand and history_item.brand and item.brand.lower() == history_item.brand.lower():
        return True
    if shared_category_name(item, history_item) or shared_use_words(item, history_item):
        return True
    return tie is not None and (tie.bought_after > 0 or tie.viewed_after > 0 or tie.next_rank is not None)


def cold_start_fact_table(user_id: str, item: Item, ranked: RankedItem, shoppers: int, total_shoppers: int, first_seen: str | None) -> FactTable:
    """The facts for an item shown to a shopper with no usable history: the item's own facts and why
    it is shown instead (how many shoppers took it up; when it first appeared, for a new item)."""
    table = build_fact_table(user_id, item, ranked, [])
    facts = list(table.facts)
    if first_seen is not None:
        text = f"It is new in this shop: first seen on {first_seen}."
        facts.append(Fact(f"F{len(facts) + 1}", FactKind.NEW_ITEM, text, first_seen, item_id=item.item_id))
    text = f"It is popular with shoppers in this shop: {shoppers} of {total_shoppers} shoppers bought or looked at it."
    facts.append(Fact(f"F{len(facts) + 1}", FactKind.POPULAR, text, str(shoppers), item_id=item.item_id, count=shoppers))
    return FactTable(user_id, item.item_id, tuple(facts))
