"""The fact table for one (shopper, item): the only things an explanation may say, each with an id."""

from __future__ import annotations

import re

from whyrec.catalog import EventKind, Item
from whyrec.schema import Fact, FactKind, FactTable, RankedItem

MAX_ATTRIBUTES = 4
MAX_HISTORY_FACTS = 2
PHRASE_CHARS = 160

_PAST_TENSE = {
    EventKind.PURCHASE: "bought",
    EventKind.CART: "added to your cart",
    EventKind.CLICK: "clicked on",
    EventKind.VIEW: "looked at",
}


def short_title(item: Item, limit: int = 80) -> str:
    """The title up to its first comma or bracket: product titles are long, a sentence wants the name."""
    head = re.split(r"[,(\[]| - ", item.title, maxsplit=1)[0].strip()
    if len(head) < 8:
        head = item.title
    return head if len(head) <= limit else head[:limit].rsplit(" ", 1)[0]


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
) -> FactTable:
    """`history` holds the shopper's recent items with the strongest event for each."""
    facts: list[Fact] = []

    def add(kind: FactKind, text: str, value: str = "", about_history: bool = False) -> None:
        facts.append(Fact(f"F{len(facts) + 1}", kind, one_line(text), one_line(value), about_history))

    by_id = {h.item_id: (h, kind) for h, kind in history}
    drivers = [a for a in ranked.attributions if a.contribution > 0 and a.history_item_id in by_id][:MAX_HISTORY_FACTS]
    # With no history item raising the score on its own, cite the one retrieval matched.
    driver_ids = [a.history_item_id for a in drivers] or [i for i in ranked.matched_history if i in by_id][:1]

    # A variant of a history item (8 vs 24 pack) shortens to the same name: then both keep full titles.
    names = {item.item_id: short_title(item), **{i: short_title(by_id[i][0]) for i in driver_ids}}
    if len(set(names.values())) < len(names):
        names = {item.item_id: item.title, **{i: by_id[i][0].title for i in driver_ids}}

    add(FactKind.ITEM_TITLE, f'The recommended item is "{names[item.item_id]}".', names[item.item_id])
    if item.brand:
        add(FactKind.ITEM_BRAND, f"It is made by {item.brand}.", item.brand)
    if item.category:
        add(FactKind.ITEM_CATEGORY, f"It is in the category {item.category}.", item.category)
    if item.price is not None:
        add(FactKind.ITEM_PRICE, f"It costs {item.price:.2f}.", f"{item.price:.2f}")
    for key, value in list(item.attributes.items())[:MAX_ATTRIBUTES]:
        label = key.replace("_", " ")
        add(FactKind.ITEM_ATTRIBUTE, f"Its {label} is {value}.", f"{label} {value}")
    # A double quote in the phrase would close the quotes it sits in.
    phrase = description_phrase(item).replace('"', "'")
    if phrase:
        add(FactKind.ITEM_PHRASE, f'The seller describes it as: "{phrase}"', phrase)

    for history_id in driver_ids:
        h, kind = by_id[history_id]
        name = names[history_id]
        add(FactKind.HISTORY_ITEM, f'You {_PAST_TENSE[kind]} "{name}".', name, about_history=True)
        if item.brand and h.brand and item.brand.lower() == h.brand.lower():
            add(FactKind.SHARED_BRAND, f'Like "{name}", it is made by {item.brand}.', item.brand, about_history=True)
        shared_category = shared_category_name(item, h)
        if shared_category:
            add(FactKind.SHARED_CATEGORY, f'Like "{name}", it is in the category {shared_category}.', shared_category, about_history=True)
        use = shared_use_words(item, h)
        if use:
            add(FactKind.SHARED_USE, f'Like "{name}", it is one of the {use} products.', use, about_history=True)

    add(FactKind.RANK, f"It is ranked #{ranked.rank} of {ranked.candidates_scored} candidates for you.", str(ranked.rank))
    for attribution in drivers[:1]:
        name = names[attribution.history_item_id]
        if attribution.rank_without is not None and attribution.rank_without > ranked.rank:
            add(
                FactKind.COUNTERFACTUAL,
                f'Without "{name}" in your history it would rank #{attribution.rank_without} instead of #{ranked.rank}.',
                str(attribution.rank_without),
                about_history=True,
            )
    return FactTable(user_id, item.item_id, tuple(facts))


def cold_start_fact_table(user_id: str, item: Item, ranked: RankedItem, shoppers: int, total_shoppers: int, first_seen: str | None) -> FactTable:
    """The facts for an item shown to a shopper with no usable history: the item's own facts and why
    it is shown instead (how many shoppers took it up; when it first appeared, for a new item)."""
    table = build_fact_table(user_id, item, ranked, [])
    facts = list(table.facts)
    if first_seen is not None:
        text = f"It is new in this shop: first seen on {first_seen}."
        facts.append(Fact(f"F{len(facts) + 1}", FactKind.NEW_ITEM, text, first_seen))
    text = f"It is popular with shoppers in this shop: {shoppers} of {total_shoppers} shoppers bought or looked at it."
    facts.append(Fact(f"F{len(facts) + 1}", FactKind.POPULAR, text, str(shoppers)))
    return FactTable(user_id, item.item_id, tuple(facts))


def template_sentence(table: FactTable) -> tuple[str, tuple[Fact, ...]]:
    """A deterministic sentence built only from the facts, and the facts it uses."""
    kinds: dict[FactKind, Fact] = {}
    for fact in table.facts:
        kinds.setdefault(fact.kind, fact)
    history = kinds.get(FactKind.HISTORY_ITEM)
    new, popular, category = kinds.get(FactKind.NEW_ITEM), kinds.get(FactKind.POPULAR), kinds.get(FactKind.ITEM_CATEGORY)
    if history is None and new is not None:
        return (f"New in {category.value}.", (new, category)) if category else ("New in this shop.", (new,))
    if history is None and popular is not None:
        return "Popular with shoppers in this shop.", (popular,)
    if history is None:
        category = kinds.get(FactKind.ITEM_CATEGORY)
        if category:
            return f"Suggested from your recent activity in {category.value}.", (category,)
        return "Suggested from your recent activity.", ()
    # "You bought "X"." -> "Because you bought "X""
    sentence = "Because you " + history.text[len("You ") :].rstrip(".")
    used = [history]
    shared_brand, shared_category = kinds.get(FactKind.SHARED_BRAND), kinds.get(FactKind.SHARED_CATEGORY)
    if shared_brand:
        sentence += f", another {shared_brand.value} product"
        used.append(shared_brand)
    elif shared_category:
        sentence += f", something else in {shared_category.value}"
        used.append(shared_category)
    return sentence + ".", tuple(used)
