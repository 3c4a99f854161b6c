"""The JSON API (FastAPI; OpenAPI docs at /docs): recommendations with explanations, "why (not)
this item", shopper events and feedback that change the next slate at once, the impression log
for support agents (login required), health and Prometheus metrics."""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Annotated, Iterator

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, status
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel, Field

from whyrec.catalog import EventKind
from whyrec.config import Settings
from whyrec.errors import UnknownItem, UnknownShopper, WhyrecError
from whyrec.passwords import verify_password
from whyrec.schema import RecommendedItem, WhyNot
from whyrec.service import ItemExplained, SlateLogged, SlateRanked, WhyrecService
from whyrec.store import AttemptRecord, DatabaseUnavailable, AttributionRecord, EventRecord, FactRecord, FeedbackKind, FeedbackRecord, ImpressionRecord, UnknownImpression

MAX_K = 50

# ---- request and response models ----


class ScoresOut(BaseModel):
    retrieval: float
    ranker: float
    features: dict[str, float] = Field(description="per-source retrieval scores (standardised)")


class ExplanationOut(BaseModel):
    text: str = Field(description='the "why you see this" text as shown')
    source: str = Field(description="llm (passed the grounding check) or template")
    grounded: bool
    facts: list[FactRecord] = Field(description="the facts the text rests on")
    prompt_version: str
    model: str
    attempts: list[AttemptRecord]
    fallback: str | None = Field(None, description="why the template sentence is shown: llm_unavailable, llm_deadline_exceeded, llm_output_unparseable or ungrounded")


class ItemOut(BaseModel):
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


class EventIn(BaseModel):
    item_id: str = Field(min_length=1, max_length=200)
    kind: EventKind = EventKind.PURCHASE


class FeedbackIn(BaseModel):
    kind: FeedbackKind
    item_id: str | None = Field(None, min_length=1, max_length=200)
    impression_id: str | None = Field(None, min_length=1, max_length=64, description="required for helpful / not_helpful")


class HealthOut(BaseModel):
    status: str
    data: str
    items: int
    shoppers: int
    model: str
    prompt_version: str
    database: str
    queued_writes: int = Field(0, description="impressions, events and feedback waiting for the database")


class ErrorOut(BaseModel):
    detail: str


# ---- conversions ----


def item_out(entry: RecommendedItem, feature_names: tuple[str, ...]) -> ItemOut:
    r, e = entry.ranked, entry.explanation
    return ItemOut(
        item_id=entry.item_id,
        title=entry.title,
        rank=r.rank,
        scores=ScoresOut(retrieval=r.retrieval_score, ranker=r.ranker_score, features=dict(zip(feature_names, r.features))),
        attributions=[AttributionRecord(history_item_id=a.history_item_id, contribution=a.contribution, rank_without=a.rank_without) for a in r.attributions],
        explanation=ExplanationOut(
            text=e.text,
            source=e.source.value,
            grounded=e.grounded,
            facts=[_fact(f) for f in e.facts],
            prompt_version=e.prompt_version,
            model=e.model,
            attempts=[AttemptRecord(raw_output=a.raw_output, text=a.text, passed=a.passed, reason=a.reason) for a in e.attempts],
            fallback=e.fallback.value if e.fallback else None,
        ),
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
        attributions=[AttributionRecord(history_item_id=a.history_item_id, contribution=a.contribution, rank_without=a.rank_without) for a in w.item.attributions],
        fact_table=[_fact(f) for f in w.fact_table.facts],
    )


def _fact(f) -> FactRecord:
    return FactRecord(id=f.fact_id, kind=f.kind.value, text=f.text, value=f.value, about_history=f.about_history)


# ---- dependencies ----


def get_service(request: Request) -> WhyrecService:
    return request.app.state.service


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


_basic = HTTPBasic(auto_error=False, description="Staff login (WHYREC_STAFF_USER / WHYREC_STAFF_PASSWORD_HASH)")


def require_staff(
    settings: Annotated[Settings, Depends(get_settings)], credentials: Annotated[HTTPBasicCredentials | None, Depends(_basic)]
) -> str:
    """The logged-in staff member's name; 401 otherwise."""
    if settings.staff_password_hash is None:
        detail = "staff login is not configured on this server (set WHYREC_STAFF_PASSWORD_HASH; `whyrec hash-password` makes one)"
    elif credentials is None:
        detail = "this endpoint is for support staff: log in with HTTP Basic credentials"
    elif credentials.username == settings.staff_user and verify_password(credentials.password, settings.staff_password_hash):
        return credentials.username
    else:
        detail = "wrong staff user name or password"
    raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": 'Basic realm="whyrec staff"'})


Service = Annotated[WhyrecService, Depends(get_service)]
Staff = Annotated[str, Depends(require_staff)]
UserId = Annotated[str, Path(min_length=1, max_length=200, description="shopper id")]
ItemId = Annotated[str, Path(min_length=1, max_length=200, description="item id")]
K = Annotated[int, Query(ge=1, le=MAX_K, description="slate size")]
_ERRORS = {404: {"model": ErrorOut}, 422: {"model": ErrorOut}}


# ---- routes ----

router = APIRouter(prefix="/api")


@router.get("/shoppers/{user_id}/recommendations", response_model=SlateOut, responses=_ERRORS, tags=["shopper"])
def recommendations(user_id: UserId, service: Service, k: K = 10, q: Annotated[str, Query(max_length=500, description="the shopper's words, e.g. 'something for my desk'")] = "") -> SlateOut:
    """The top k items for the shopper, each with its checked explanation; logged as an impression."""
    served = service.recommend(user_id, k, q)
    names = service.recommender.retriever.feature_names
    return SlateOut(
        impression_id=served.impression.impression_id,
        served_at=served.impression.served_at,
        user_id=user_id,
        topic_matched=served.topic_matched,
        items=[item_out(e, names) for e in served.items],
    )


@router.get("/shoppers/{user_id}/recommendations/stream", responses={200: {"content": {"application/x-ndjson": {}}}, **_ERRORS}, tags=["shopper"])
def recommendations_stream(user_id: UserId, service: Service, k: K = 10, q: Annotated[str, Query(max_length=500)] = "") -> StreamingResponse:
    """The same slate as NDJSON lines as it is made: `{"event": "slate", ...}` with the ranked items,
    one `{"event": "explanation", ...}` per item as soon as it is ready, then `{"event": "done", "impression_id": ...}`."""
    events = service.stream(user_id, k, q)
    first = next(events)  # errors in the request (unknown shopper) surface here, before the 200 is sent
    names = service.recommender.retriever.feature_names

    def lines() -> Iterator[str]:
        for event in _chain(first, events):
            if isinstance(event, SlateRanked):
                items = [{"position": i, "item_id": r.item_id, "title": t, "rank": r.rank} for i, (r, t) in enumerate(zip(event.slate.items, event.titles))]
                payload = {"event": "slate", "user_id": user_id, "topic_matched": event.slate.topic_matched, "items": items}
            elif isinstance(event, ItemExplained):
                payload = {"event": "explanation", "position": event.position, "item": item_out(event.item, names).model_dump(mode="json")}
            elif isinstance(event, SlateLogged):
                payload = {"event": "done", "impression_id": event.served.impression.impression_id}
            yield json.dumps(payload, ensure_ascii=False) + "\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")


def _chain(first, rest):
    yield first
    yield from rest


@router.get("/shoppers/{user_id}/items/{item_id}/explanation", response_model=ExplanationResponse, responses=_ERRORS, tags=["shopper"])
def explanation(user_id: UserId, item_id: ItemId, service: Service, k: K = 10) -> ExplanationResponse:
    """Why this item is here, for any item: its explanation, and "why not?" when it is outside the
    top k (its rank, its score gap to the last shown item, what would change it). Logged."""
    served = service.explain(user_id, item_id, k)
    return ExplanationResponse(
        impression_id=served.impression.impression_id,
        served_at=served.impression.served_at,
        item=item_out(served.item, service.recommender.retriever.feature_names),
        why_not=why_not_out(served.why_not),
    )


_QUEUED = {
    202: {"description": "accepted while the database is unavailable (`queued: true`); written when it returns"},
    503: {"model": ErrorOut, "description": "the database is unavailable and its write queue is full"},
}
_NEEDS_DATABASE = {503: {"model": ErrorOut, "description": "the database is unavailable"}}


@router.post("/shoppers/{user_id}/events", response_model=EventRecord, status_code=201, responses={**_ERRORS, **_QUEUED}, tags=["shopper"])
def post_event(user_id: UserId, body: EventIn, service: Service, response: Response) -> EventRecord:
    """A view, click, cart or purchase: part of the shopper's history from the next request on."""
    record = service.record_event(user_id, body.item_id, body.kind)
    if record.queued:
        response.status_code = status.HTTP_202_ACCEPTED
    return record


@router.post("/shoppers/{user_id}/feedback", response_model=FeedbackRecord, status_code=201, responses={**_ERRORS, **_QUEUED}, tags=["shopper"])
def post_feedback(user_id: UserId, body: FeedbackIn, service: Service, response: Response) -> FeedbackRecord:
    """helpful / not_helpful on a shown explanation; not_interested in an item (never shown again);
    exclude_purchase (that history item no longer drives or is cited in recommendations)."""
    record = service.record_feedback(user_id, body.kind, body.item_id, body.impression_id)
    if record.queued:
        response.status_code = status.HTTP_202_ACCEPTED
    return record


@router.get("/impressions", response_model=list[ImpressionRecord], responses={401: {"model": ErrorOut}, **_NEEDS_DATABASE}, tags=["support"])
def impressions(
    service: Service,
    _staff: Staff,
    user_id: Annotated[str | None, Query(max_length=200)] = None,
    item_id: Annotated[str | None, Query(max_length=200)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[ImpressionRecord]:
    """Served slates, newest first (staff only): with `item_id`, only those that showed it."""
    return service.impressions(user_id, item_id, since, until, limit)


@router.get("/impressions/{impression_id}", response_model=ImpressionRecord, responses={401: {"model": ErrorOut}, 404: {"model": ErrorOut}, **_NEEDS_DATABASE}, tags=["support"])
def impression(impression_id: Annotated[str, Path(max_length=64)], service: Service, _staff: Staff) -> ImpressionRecord:
    """One served slate exactly as recorded: texts, fact tables, prompts, prompt version, model, verdicts."""
    return service.impression(impression_id)


@router.get("/shoppers/{user_id}/items/{item_id}/why-not", response_model=WhyNotOut, responses={401: {"model": ErrorOut}, **_ERRORS}, tags=["support"])
def why_not(user_id: UserId, item_id: ItemId, service: Service, _staff: Staff, k: K = 10) -> WhyNotOut:
    """The ranker's view only (staff): rank, score gap, counterfactuals; nothing generated or logged."""
    return why_not_out(service.why_not(user_id, item_id, k))


@router.get("/health", response_model=HealthOut, tags=["operations"])
def health(service: Service) -> HealthOut:
    catalog = service.catalog
    try:
        service.store.ping()
        database = "ok"
    except Exception as exc:  # noqa: BLE001 - any driver error means "not ok"; the reason is reported
        database = f"error: {type(exc).__name__}"
    explainer = service.recommender.explainer
    return HealthOut(
        status="ok" if database == "ok" and not service.store.queued else "degraded",
        data=catalog.name,
        items=len(catalog.items),
        shoppers=len(catalog.users),
        model=explainer.model_name,
        prompt_version=explainer.template.label,
        database=database,
        queued_writes=service.store.queued,
    )


# ---- the app ----

_STATUS = {UnknownShopper: 404, UnknownItem: 404, UnknownImpression: 404, DatabaseUnavailable: 503}


def create_app(service: WhyrecService, settings: Settings) -> FastAPI:
    app = FastAPI(
        title="whyrec",
        description="Recommendations whose product is the explanation. Shopper endpoints are public; support endpoints need the staff login.",
        version="0.1.0",
    )
    app.state.service = service
    app.state.settings = settings
    app.include_router(router)

    @app.exception_handler(WhyrecError)
    def _user_error(_request: Request, exc: WhyrecError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=_STATUS.get(type(exc), 422))

    @app.get("/metrics", tags=["operations"], response_class=Response)
    def metrics() -> Response:
        """Prometheus text format: requests and latency per route, latency per pipeline stage."""
        return Response(service.metrics.render(), media_type=service.metrics.content_type)

    @app.middleware("http")
    async def _count(request: Request, call_next):
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        label = getattr(route, "path", None) or "unmatched"
        service.metrics.requests.labels(label, request.method, str(response.status_code)).inc()
        service.metrics.request_seconds.labels(label).observe(time.perf_counter() - started)
        return response

    return app
