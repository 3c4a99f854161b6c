"""The wire contract: the one JSON shape of each thing whyrec hands out or takes in (a served item
with its explanation and fact table, a slate, "why not", an impression, an event, feedback), and the
one converter from the domain objects (`whyrec.core.schema`) to it. The API answers with these
models, the CLI's `--json` prints them, the store keeps its JSON columns and the write spool in
them: a shape changes here or nowhere."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from whyrec.core.catalog import EventKind, Item
from whyrec.core.schema import Fact, RecommendedItem, WhyNot, fact_to_dict

# Ids and texts may be any Unicode except control characters (C0, DEL, C1): those are never part of
# an id or a shopper's words, and would end up in logs and the store. A 422 names the field.
NO_CONTROL = r"^[^\x00-\x1f\x7f-\x9f]*$"


class FeedbackKind(str, Enum):
    HELPFUL = "helpful"  # on an explanation
    NOT_HELPFUL = "not_helpful"
    NOT_INTERESTED = "not_interested"  # in an item: never recommend it again
    EXCLUDE_PURCHASE = "exclude_purchase"  # "don't use this purchase for my recommendations"


# ---- the parts of a served item ----


class FactRecord(BaseModel):
    """One fact of a fact table, with the ids of what it is about (`whyrec.core.schema.Fact`)."""

    id: str
    kind: str
    text: str
    value: str = ""
    about_history: bool = False
    item_id: str | None = Field(None, description="the recommended item, for item, relation, rank and counterfactual facts")
    history_item_id: str | None = Field(None, description="the history item, for history, relation and counterfactual facts")
    attribute: str | None = Field(None, description="item facts: title, brand, category, price, phrase or the attribute's name")
    event: str | None = Field(None, description="history facts: what the shopper did; together facts: what the counted shoppers did")
    count: int | None = Field(None, description="shoppers, for bought_together, viewed_together and popular facts")
    rank: int | None = Field(None, description="rank and counterfactual facts: the item's rank; often_next: its place among predicted next items")
    rank_without: int | None = Field(None, description="counterfactual facts: the rank without the history item")
    position: int | None = Field(None, description="history facts: 1 = the shopper's most recent history item")

    @classmethod
    def of(cls, fact: Fact) -> "FactRecord":
        return cls(**fact_to_dict(fact))


class AttributionRecord(BaseModel):
    history_item_id: str
    contribution: float
    rank_without: int | None = None


class AttemptRecord(BaseModel):
    raw_output: str
    text: str
    passed: bool
    reason: str


class PromptMessage(BaseModel):
    role: str
    content: str


class ScoresOut(BaseModel):
    retrieval: float
    ranker: float
    features: dict[str, float] = Field(description="per-source retrieval scores (standardised)")


class ExplanationOut(BaseModel):
    text: str = Field(description='the "why you see this" text as shown')
    source: str = Field(description="llm (passed the grounding check) or template")
    grounded: bool
    facts: list[FactRecord] = Field(description="the facts the text rests on")
    fact_table: list[FactRecord] = Field(description="every fact of the item's table, each with its subject ids: what the text was checked against")
    prompt_version: str
    model: str
    attempts: list[AttemptRecord]
    fallback: str | None = Field(None, description="why the template sentence is shown: llm_pending, llm_unavailable, llm_deadline_exceeded, llm_output_unparseable or ungrounded")
    pending: bool = Field(False, description="the checked template is shown while the model's text is written in the background; ask again (or follow the stream) for it")


class ItemOut(BaseModel):
    """One served item: the same JSON from the API, `whyrec recommend|explain --json` and the stream."""

    item_id: str
    title: str
    rank: int
    scores: ScoresOut
    attributions: list[AttributionRecord] = Field(description="history items by how much they raised this item's score")
    explanation: ExplanationOut


class SlateOut(BaseModel):
    impression_id: str = Field(description="the impression log record of this slate")
    served_at: datetime
    user_id: str
    topic_matched: bool = Field(description="the request's words narrowed the candidates")
    cold_start: bool = Field(False, description="the shopper has no usable history (new, or every purchase excluded): popular and new items with template reasons")
    items: list[ItemOut]


class RecommendationsOut(BaseModel):
    """A slate made outside the service (`whyrec recommend --json`): not logged, so no impression."""

    user_id: str
    items: list[ItemOut]


class ChangeOut(BaseModel):
    kind: str = Field(description="blocked, leave_out_history_item, remove_items_above or score_needed")
    text: str
    history_item_id: str | None = None
    new_rank: int | None = None


class WhyNotOut(BaseModel):
    item_id: str
    title: str
    rank: int = Field(description="rank among the shopper's candidates")
    candidates_scored: int
    k: int
    shown: bool = Field(description="the item is in the top k the shopper would be shown now")
    score: float
    last_shown_item_id: str | None
    last_shown_score: float | None
    score_gap: float = Field(description="last shown item's score minus this item's; > 0 means below the cut")
    changes: list[ChangeOut] = Field(description="what would change it, computed by the ranker")
    attributions: list[AttributionRecord]
    fact_table: list[FactRecord]


class ExplanationResponse(BaseModel):
    impression_id: str
    served_at: datetime
    item: ItemOut
    why_not: WhyNotOut


# ---- the impression log, events and feedback ----


class ImpressionItemRecord(BaseModel):
    position: int = Field(description="1-based place in the served slate")
    item_id: str
    title: str
    rank: int = Field(description="rank among all scored candidates")
    candidates_scored: int
    retrieval_score: float
    ranker_score: float
    features: dict[str, float] = Field(description="per-source retrieval scores")
    attributions: list[AttributionRecord]
    fact_table: list[FactRecord] = Field(description="every fact the generator was given")
    cited_fact_ids: list[str] = Field(description="the facts the shown text rests on")
    prompt: list[PromptMessage] = Field(description="the exact messages sent to the generator (first attempt)")
    prompt_version: str
    model: str
    text: str = Field(description="the explanation exactly as shown")
    source: str = Field(description="llm or template")
    grounded: bool
    attempts: list[AttemptRecord]


class ImpressionRecord(BaseModel):
    impression_id: str
    served_at: datetime
    user_id: str
    kind: str = Field(description="slate (recommendations) or explain (one item on request)")
    history: list[str] = Field(description="the history the slate was ranked on, oldest first")
    items: list[ImpressionItemRecord]


class EventRecord(BaseModel):
    event_id: int | None = Field(description="None while queued (the database was unavailable)")
    created_at: datetime
    user_id: str
    item_id: str
    kind: EventKind
    queued: bool = Field(False, description="accepted while the database was unavailable; written when it returns")


class FeedbackRecord(BaseModel):
    feedback_id: int | None = Field(description="None while queued (the database was unavailable)")
    created_at: datetime
    user_id: str
    kind: FeedbackKind
    item_id: str | None = None
    impression_id: str | None = None
    queued: bool = Field(False, description="accepted while the database was unavailable; written when it returns")


# ---- what shoppers post ----


class EventIn(BaseModel):
    item_id: str = Field(min_length=1, max_length=200, pattern=NO_CONTROL)
    kind: EventKind = EventKind.PURCHASE


class FeedbackIn(BaseModel):
    kind: FeedbackKind
    item_id: str | None = Field(None, min_length=1, max_length=200, pattern=NO_CONTROL)
    impression_id: str | None = Field(None, min_length=1, max_length=64, pattern=NO_CONTROL, description="required for helpful / not_helpful")


# ---- live catalog changes (staff) ----

_Id = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=NO_CONTROL)]
_Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500, pattern=NO_CONTROL)]


class CatalogAction(str, Enum):
    ADD = "add"
    REMOVE = "remove"


class CatalogItem(BaseModel):
    """A new item's fields (`whyrec.core.catalog.Item`), as the API and the CLI take them and the change log keeps them."""

    model_config = ConfigDict(extra="forbid")

    item_id: _Id
    title: _Name
    brand: _Name | None = None
    categories: list[_Name] = Field(default_factory=list, max_length=10, description="the category path, broadest first")
    description: Annotated[str, StringConstraints(strip_whitespace=True, max_length=5000, pattern=NO_CONTROL)] = ""
    price: float | None = Field(None, ge=0, allow_inf_nan=False)

    def to_item(self) -> Item:
        return Item(self.item_id, self.title, self.brand, tuple(self.categories), self.description, self.price)


class CatalogChange(BaseModel):
    """One recorded change."""

    change_id: int
    action: CatalogAction
    item_id: str
    item: CatalogItem | None = Field(description="the added item's fields; null for a removal")
    staff_user: str
    created_at: datetime


# ---- the converter ----


def item_out(entry: RecommendedItem, feature_names: tuple[str, ...]) -> ItemOut:
    """The served item as it goes on the wire; `feature_names` name `entry.ranked.features`."""
    r, e = entry.ranked, entry.explanation
    return ItemOut(
        item_id=entry.item_id,
        title=entry.title,
        rank=r.rank,
        scores=ScoresOut(retrieval=r.retrieval_score, ranker=r.ranker_score, features=dict(zip(feature_names, r.features))),
        attributions=_attributions(r.attributions),
        explanation=ExplanationOut(
            text=e.text,
            source=e.source.value,
            grounded=e.grounded,
            facts=[FactRecord.of(f) for f in e.facts],
            fact_table=[FactRecord.of(f) for f in (entry.fact_table.facts if entry.fact_table else e.facts)],
            prompt_version=e.prompt_version,
            model=e.model,
            attempts=[AttemptRecord(raw_output=a.raw_output, text=a.text, passed=a.passed, reason=a.reason) for a in e.attempts],
            fallback=e.fallback.value if e.fallback else None,
            pending=e.pending,
        ),
    )


def impression_item(position: int, entry: RecommendedItem, prompt: list[tuple[str, str]], feature_names: tuple[str, ...]) -> ImpressionItemRecord:
    """What the impression log keeps of a served item: the wire item, flattened, with its place in
    the slate, the candidates it was ranked among and the exact prompt."""
    out = item_out(entry, feature_names)
    e = out.explanation
    return ImpressionItemRecord(
        position=position,
        item_id=out.item_id,
        title=out.title,
        rank=out.rank,
        candidates_scored=entry.ranked.candidates_scored,
        retrieval_score=out.scores.retrieval,
        ranker_score=out.scores.ranker,
        features=out.scores.features,
        attributions=out.attributions,
        fact_table=e.fact_table,
        cited_fact_ids=[f.id for f in e.facts],
        prompt=[PromptMessage(role=role, content=content) for role, content in prompt],
        prompt_version=e.prompt_version,
        model=e.model,
        text=e.text,
        source=e.source,
        grounded=e.grounded,
        attempts=e.attempts,
    )


def why_not_out(w: WhyNot) -> WhyNotOut:
    return WhyNotOut(
        item_id=w.item.item_id,
        title=w.title,
        rank=w.item.rank,
        candidates_scored=w.item.candidates_scored,
        k=w.k,
        shown=w.shown,
        score=w.item.ranker_score,
        last_shown_item_id=w.last_shown.item_id if w.last_shown else None,
        last_shown_score=w.last_shown.ranker_score if w.last_shown else None,
        score_gap=w.score_gap,
        changes=[ChangeOut(kind=c.kind, text=c.text, history_item_id=c.history_item_id, new_rank=c.new_rank) for c in w.changes],
        attributions=_attributions(w.item.attributions),
        fact_table=[FactRecord.of(f) for f in w.fact_table.facts],
    )


def _attributions(attributions) -> list[AttributionRecord]:
    return [AttributionRecord(history_item_id=a.history_item_id, contribution=a.contribution, rank_without=a.rank_without) for a in attributions]
