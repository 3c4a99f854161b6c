"""What the stages hand each other: candidates from retrieval, ranked items from the ranker,
fact tables and explanations from the explainer, and the recommendation the pipeline returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from whyrec.core.catalog import EventKind, Interaction
from whyrec.core.errors import ConfigError


@dataclass(frozen=True)
class Candidate:
    item_id: str
    score: float
    matched_history: tuple[str, ...] = ()  # history item ids this candidate was found through, best first
    features: tuple[float, ...] = ()  # per-source retrieval scores, named by the source's feature_names


class CandidateSource(Protocol):
    """What the ranker and its trainer need from retrieval."""

    feature_names: tuple[str, ...]

    def candidates(self, history: list[str], n: int, exclude: set[str] = frozenset()) -> list[Candidate]: ...

    def features(self, histories: list[list[str]], item_ids: list[str]) -> Any:
        """[len(histories), len(feature_names)] array: item_ids[i]'s features for histories[i]."""
        ...


@dataclass(frozen=True)
class ShownSlate:
    """One served slate and what the shopper did with it: the ranker's feedback training example."""

    user_id: str
    history: tuple[str, ...]  # the shopper's history when the slate was served
    shown: tuple[str, ...]  # in slate order
    engaged: frozenset[str]  # shown items clicked, carted or bought afterwards; the rest were skipped


@dataclass(frozen=True)
class Attribution:
    """How much one history item moved a ranked item: its score with and without that history item."""

    history_item_id: str
    contribution: float  # score(full history) - score(history without this item); > 0 means it helped
    rank_without: int | None = None  # the ranked item's rank had this history item been left out


# An item the sequence model puts this high right after a history item "often comes next".
NEXT_RANK_LIMIT = 10


@dataclass(frozen=True)
class Evidence:
    """What other shoppers did that ties one history item to a candidate item, counted by retrieval:
    the evidence behind a collaborative reason ("12 shoppers who bought X bought this next")."""

    history_item_id: str
    item_id: str
    # Shoppers who bought the history item and then, within the next few purchases, the item.
    bought_after: int = 0
    # Shoppers who looked at (or did more with) the history item and then the item; counts views too.
    viewed_after: int = 0
    # The item's place among the items the sequence model predicts right after the history item alone.
    next_rank: int | None = None


@dataclass(frozen=True)
class RankedItem:
    item_id: str
    rank: int  # 1-based, among all scored candidates
    retrieval_score: float
    ranker_score: float
    matched_history: tuple[str, ...] = ()
    attributions: tuple[Attribution, ...] = ()  # sorted, most positive contribution first
    candidates_scored: int = 0
    features: tuple[float, ...] = ()  # the candidate's per-source retrieval scores

    @property
    def top_attribution(self) -> Attribution | None:
        return self.attributions[0] if self.attributions else None


class FactKind(str, Enum):
    ITEM_TITLE = "item_title"
    ITEM_BRAND = "item_brand"
    ITEM_CATEGORY = "item_category"
    ITEM_PRICE = "item_price"
    ITEM_ATTRIBUTE = "item_attribute"
    ITEM_PHRASE = "item_phrase"
    HISTORY_ITEM = "history_item"
    SHARED_BRAND = "shared_brand"
    SHARED_CATEGORY = "shared_category"
    RANK = "rank"
    COUNTERFACTUAL = "counterfactual"
    POPULAR = "popular"
    NEW_ITEM = "new_item"  # first seen in the shop's data recently (a reason for shoppers with no history)
    SHARED_USE = "shared_use"  # what the item and a history item are both for (words both names carry)
    # Relations from other shoppers' behaviour: how many shoppers who bought (looked at) a history
    # item went on to buy (look at) the item, and where the sequence model puts the item right after it.
    BOUGHT_TOGETHER = "bought_together"
    VIEWED_TOGETHER = "viewed_together"
    OFTEN_NEXT = "often_next"
    TASTE = "taste"  # a summary of the shopper's taste that is not an item ("likes fountain pens")


# The kinds that relate one history item to the recommended item; each such fact carries both ids.
RELATION_KINDS = frozenset(
    {FactKind.SHARED_BRAND, FactKind.SHARED_CATEGORY, FactKind.SHARED_USE, FactKind.BOUGHT_TOGETHER, FactKind.VIEWED_TOGETHER, FactKind.OFTEN_NEXT}
)


@dataclass(frozen=True)
class Fact:
    """One claim an explanation may make, with the ids of what it is about: an item fact names the
    recommended item, a history fact the history item, a relation fact both. The check matches
    each claim of a text to one fact with the same subjects."""

    fact_id: str  # "F1", "F2", ... stable within one fact table
    kind: FactKind
    text: str  # the fact as a plain sentence, the only form the LLM sees
    value: str = ""  # the bare value (a brand, a title, a number); a history fact's value is the item's title
    item_id: str | None = None  # the recommended item, for item, relation, rank and counterfactual facts
    history_item_id: str | None = None  # the history item, for history, relation and counterfactual facts
    attribute: str | None = None  # item facts: "title", "brand", "category", "price", "phrase" or the attribute's name
    event: EventKind | None = None  # history facts: what the shopper did; together facts: what the counted shoppers did
    count: int | None = None  # together and popular facts: shoppers; often_next: the item's place among predicted next items
    rank: int | None = None  # rank and counterfactual facts: the item's rank
    rank_without: int | None = None  # counterfactual facts: its rank without the history item
    position: int | None = None  # history facts: 1 = the shopper's most recent history item

    @property
    def about_history(self) -> bool:
        """The fact comes from the shopper's own history (a history item or a taste summary)."""
        return self.history_item_id is not None or self.kind is FactKind.TASTE


_FACT_INTS = ("count", "rank", "rank_without", "position")
_FACT_IDS = ("item_id", "history_item_id", "attribute")


def fact_to_dict(fact: Fact) -> dict[str, Any]:
    """The fact as JSON (CLI, API, impression log): id, kind, text, value, its subject ids, and the
    typed details it has."""
    out: dict[str, Any] = {"id": fact.fact_id, "kind": fact.kind.value, "text": fact.text, "value": fact.value, "about_history": fact.about_history}
    for name in (*_FACT_IDS, "event", *_FACT_INTS):
        value = getattr(fact, name)
        if value is not None:
            out[name] = value.value if isinstance(value, Enum) else value
    return out


def fact_table_from_json(data: Any, where: str, user_id: str = "", item_id: str = "") -> FactTable:
    """A fact table as `explanation.fact_table` prints it: a list of facts, or an object that holds
    one ({"fact_table": [...]}, an item entry with "explanation", or {"facts": [...]})."""
    if isinstance(data, dict):
        for key in ("explanation", "fact_table", "facts"):
            if key in data:
                inner = data[key]
                if key == "explanation" and isinstance(inner, dict):
                    return fact_table_from_json(inner, f"{where}.explanation", str(data.get("user_id", user_id)), str(data.get("item_id", item_id)))
                return fact_table_from_json(inner, f"{where}.{key}", str(data.get("user_id", user_id)), str(data.get("item_id", item_id)))
        raise ConfigError(f"{where}: expected a list of facts or an object with 'fact_table'")
    if not isinstance(data, list) or not data:
        raise ConfigError(f"{where}: expected a non-empty list of facts")
    facts = tuple(fact_from_dict(f, f"{where}[{i}]") for i, f in enumerate(data))
    ids = [f.fact_id for f in facts]
    if len(set(ids)) < len(ids):
        raise ConfigError(f"{where}: fact ids repeat ({', '.join(sorted({i for i in ids if ids.count(i) > 1}))}); each fact needs its own id")
    item = item_id or next((f.item_id for f in facts if f.item_id), "")
    return FactTable(user_id, item, facts)


def fact_from_dict(data: Any, where: str) -> Fact:
    """The inverse of fact_to_dict; `where` names the place in the file for the error message."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a fact object with id, kind and text")
    for name in ("id", "kind", "text"):
        if not isinstance(data.get(name), str) or not data[name]:
            raise ConfigError(f"{where}.{name}: missing or not a non-empty string")
    try:
        kind = FactKind(data["kind"])
    except ValueError:
        raise ConfigError(f"{where}.kind: unknown kind '{data['kind']}'; expected one of {', '.join(k.value for k in FactKind)}") from None
    fields: dict[str, Any] = {}
    for name in _FACT_IDS:
        if data.get(name) is not None:
            if not isinstance(data[name], (str, int)) or isinstance(data[name], bool):
                raise ConfigError(f"{where}.{name}: expected an id (string)")
            fields[name] = str(data[name])
    for name in _FACT_INTS:
        if data.get(name) is not None:
            if not isinstance(data[name], int) or isinstance(data[name], bool):
                raise ConfigError(f"{where}.{name}: expected a whole number, not {data[name]!r}")
            fields[name] = data[name]
    if data.get("event") is not None:
        try:
            fields["event"] = EventKind(data["event"])
        except ValueError:
            raise ConfigError(f"{where}.event: unknown event '{data['event']}'; expected one of {', '.join(k.value for k in EventKind)}") from None
    value = data.get("value", "")
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ConfigError(f"{where}.value: expected a string")
    return Fact(data["id"], kind, data["text"], str(value), **fields)


@dataclass(frozen=True)
class FactTable:
    user_id: str
    item_id: str
    facts: tuple[Fact, ...]

    def by_id(self) -> dict[str, Fact]:
        return {f.fact_id: f for f in self.facts}

    def history_facts(self) -> list[Fact]:
        return [f for f in self.facts if f.about_history]

    def to_list(self) -> list[dict[str, Any]]:
        return [fact_to_dict(f) for f in self.facts]


class ExplanationSource(str, Enum):
    LLM = "llm"
    TEMPLATE = "template"


class FallbackReason(str, Enum):
    """Why the template sentence was shown instead of the generator's text."""

    LLM_UNAVAILABLE = "llm_unavailable"  # connection refused, HTTP error, client timeout
    LLM_DEADLINE_EXCEEDED = "llm_deadline_exceeded"  # no checked answer within WHYREC_EXPLAIN_DEADLINE_S
    LLM_OUTPUT_UNPARSEABLE = "llm_output_unparseable"  # a response that is not a chat answer, or no sentence in it
    UNGROUNDED = "ungrounded"  # answers came back but failed the grounding check
    LLM_PENDING = "llm_pending"  # the page did not wait: the model's text is being written in the background

    @property
    def transient(self) -> bool:
        """A fault of the server, not an answer to these facts: not cached, so that a server that
        recovers is asked again. Garbage counts (a proxy's error page, a misconfigured model);
        an ungrounded answer is the model's own, and asking again gives the same."""
        return self is not FallbackReason.UNGROUNDED


@dataclass(frozen=True)
class Explanation:
    text: str
    source: ExplanationSource
    # The generator's answer passed the grounding check and is the text shown. False means it failed
    # (twice) and the shown text is the template sentence, which is built from the facts alone.
    grounded: bool
    facts: tuple[Fact, ...]  # the facts the shown text rests on
    prompt_version: str = ""
    model: str = ""
    attempts: tuple["Attempt", ...] = ()  # every LLM answer and its verdict, shown or not
    fallback: FallbackReason | None = None  # set when source is TEMPLATE

    @property
    def pending(self) -> bool:
        """A checked template shown while the model's text is on its way (the next view shows it)."""
        return self.fallback is FallbackReason.LLM_PENDING


@dataclass(frozen=True)
class Attempt:
    raw_output: str
    text: str
    passed: bool
    reason: str  # why the grounding check failed, or "ok"


@dataclass(frozen=True)
class RecommendedItem:
    item_id: str
    title: str
    ranked: RankedItem
    explanation: Explanation
    fact_table: FactTable | None = None  # every fact the generator was given (explanation.facts: the ones the text uses)


@dataclass(frozen=True)
class Recommendations:
    user_id: str
    items: list[RecommendedItem] = field(default_factory=list)


@dataclass(frozen=True)
class ShopperOverlay:
    """What a shopper did and told us since the data was loaded (the service's event and feedback
    store), laid over the catalog's history on every request."""

    events: tuple[Interaction, ...] = ()  # in time order, after the catalog's events
    not_interested: frozenset[str] = frozenset()  # never recommended
    # "Don't use this purchase": never read as history (retrieval, ranker, facts) and never recommended.
    excluded_history: frozenset[str] = frozenset()


@dataclass(frozen=True)
class RankedSlate:
    """A shopper's slate before the explanations: what the ranker chose and the facts for each item."""

    user_id: str
    history: tuple[str, ...]  # the history it was ranked on, overlay applied
    items: tuple[RankedItem, ...]  # in slate order, with attributions
    tables: tuple[FactTable, ...]  # one per item, same order
    topic_matched: bool = False  # the candidates were narrowed to items matching the asked topic
    # No usable history (a new shopper, or every purchase excluded): popular and new items, each
    # explained by a template reason from its popularity facts, never by the generator.
    cold_start: bool = False


@dataclass(frozen=True)
class Change:
    """One thing that would move an item, computed by the ranker, not guessed."""

    kind: str  # "blocked", "leave_out_history_item", "remove_items_above", "score_needed"
    text: str
    history_item_id: str | None = None
    new_rank: int | None = None


@dataclass(frozen=True)
class WhyNot:
    """Where an item stands against the slate a shopper would be shown now."""

    item: RankedItem  # ranked among the shopper's candidates, with attributions
    title: str
    fact_table: FactTable
    k: int
    shown: bool
    last_shown: RankedItem | None  # the k-th item of the slate
    score_gap: float  # last shown item's ranker score minus this item's (> 0: below the cut)
    changes: tuple[Change, ...]
