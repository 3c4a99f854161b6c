"""The JSON API (FastAPI; OpenAPI docs at /docs): recommendations with explanations, "why (not)
this item", shopper events and feedback that change the next slate at once, the impression log
for support agents (login required), health and Prometheus metrics."""

from __future__ import annotations

import json
import time
from typing import Annotated, Iterator

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from whyrec.core.config import Settings
from whyrec.core.errors import UnknownItem, UnknownShopper, WhyrecError
from whyrec.core.protocol import NO_CONTROL, EventIn, EventRecord, ExplanationResponse, FeedbackIn, FeedbackRecord, ImpressionRecord, SlateOut, WhyNotOut, item_out, why_not_out
from whyrec.pipeline import TemplateRun, compare_templates, parse_template, sample_tables, templates
from whyrec.service.accounts import load_accounts
from whyrec.service.catalog_api import catalog_router
from whyrec.service.deps import ERRORS, PUBLIC, STAFF, ErrorOut, IsoTime, ItemId, K, PromptEngineer, RateLimited, Service, SupportStaff, UserId, Words, get_settings
from whyrec.service.ratelimit import RateLimiter
from whyrec.service.service import ItemExplained, SlateLogged, SlateRanked, WhyrecService
from whyrec.service.store import DatabaseUnavailable, UnknownImpression

# ---- operations ----


class HealthOut(BaseModel):
    status: str
    data: str
    items: int
    shoppers: int
    model: str
    prompt_version: str
    database: str
    queued_writes: int = Field(0, description="impressions, events and feedback waiting for the database")



# ---- routes ----

def _known_query_only(request: Request) -> None:
    """A query parameter the endpoint does not take is refused, not ignored: `?kk=5` for `?k=5`
    would otherwise silently answer with the default."""
    route = request.scope.get("route")
    if route is None:
        return
    known = _query_names(route.dependant)
    unknown = sorted({name for name in request.query_params if name not in known})
    if unknown:
        takes = ", ".join(sorted(known)) or "none"
        raise HTTPException(422, f"query: unknown parameter {', '.join(repr(n[:40]) for n in unknown[:5])} (this endpoint takes: {takes})")


def _query_names(dependant) -> set[str]:
    return {f.alias for f in dependant.query_params}.union(*(_query_names(d) for d in dependant.dependencies))


router = APIRouter(
    prefix="/api",
    responses={413: {"model": ErrorOut}, 422: {"model": ErrorOut}},  # every 422 is one readable line (see _invalid_request)
    dependencies=[Depends(_known_query_only)],
)


@router.get("/shoppers/{user_id}/recommendations", response_model=SlateOut, responses=PUBLIC, tags=["shopper"], dependencies=RateLimited)
def recommendations(user_id: UserId, service: Service, k: K = 10, q: Words = "") -> SlateOut:
    """The top k items for the shopper, each with its checked explanation; logged as an impression."""
    served = service.recommend(user_id, k, q)
    names = service.feature_names
    return SlateOut(
        impression_id=served.impression.impression_id,
        served_at=served.impression.served_at,
        user_id=user_id,
        topic_matched=served.topic_matched,
        cold_start=served.cold_start,
        items=[item_out(e, names) for e in served.items],
    )


@router.get("/shoppers/{user_id}/recommendations/stream", responses={200: {"content": {"application/x-ndjson": {}}}, **PUBLIC}, tags=["shopper"], dependencies=RateLimited)
def recommendations_stream(user_id: UserId, service: Service, k: K = 10, q: Words = "") -> StreamingResponse:
    """The same slate as NDJSON lines as it is made: `{"event": "slate", ...}` with the ranked items,
    one `{"event": "explanation", ...}` per item as soon as it is ready, then `{"event": "done", "impression_id": ...}`."""
    events = service.stream(user_id, k, q)
    first = next(events)  # errors in the request (unknown shopper) surface here, before the 200 is sent
    names = service.feature_names

    def lines() -> Iterator[str]:
        for event in _chain(first, events):
            if isinstance(event, SlateRanked):
                items = [{"position": i, "item_id": r.item_id, "title": t, "rank": r.rank} for i, (r, t) in enumerate(zip(event.slate.items, event.titles))]
                payload = {"event": "slate", "user_id": user_id, "topic_matched": event.slate.topic_matched, "cold_start": event.slate.cold_start, "items": items}
            elif isinstance(event, ItemExplained):
                payload = {"event": "explanation", "position": event.position, "item": item_out(event.item, names).model_dump(mode="json")}
            elif isinstance(event, SlateLogged):
                payload = {"event": "done", "impression_id": event.served.impression.impression_id}
            yield json.dumps(payload, ensure_ascii=False) + "\n"

    return StreamingResponse(lines(), media_type="application/x-ndjson")


def _chain(first, rest):
    yield first
    yield from rest


@router.get("/shoppers/{user_id}/items/{item_id}/explanation", response_model=ExplanationResponse, responses=PUBLIC, tags=["shopper"], dependencies=RateLimited)
def explanation(user_id: UserId, item_id: ItemId, service: Service, k: K = 10) -> ExplanationResponse:
    """Why this item is here, for any item: its explanation, and "why not?" when it is outside the
    top k (its rank, its score gap to the last shown item, what would change it). Logged."""
    served = service.explain(user_id, item_id, k)
    return ExplanationResponse(
        impression_id=served.impression.impression_id,
        served_at=served.impression.served_at,
        item=item_out(served.item, service.feature_names),
        why_not=why_not_out(served.why_not),
    )


_QUEUED = {
    202: {"description": "accepted while the database is unavailable (`queued: true`); written when it returns"},
    503: {"model": ErrorOut, "description": "the database is unavailable and its write queue is full"},
}
_NEEDS_DATABASE = {503: {"model": ErrorOut, "description": "the database is unavailable"}}


@router.post("/shoppers/{user_id}/events", response_model=EventRecord, status_code=201, responses={**PUBLIC, **_QUEUED}, tags=["shopper"], dependencies=RateLimited)
def post_event(user_id: UserId, body: EventIn, service: Service, response: Response) -> EventRecord:
    """A view, click, cart or purchase: part of the shopper's history from the next request on."""
    record = service.record_event(user_id, body.item_id, body.kind)
    if record.queued:
        response.status_code = status.HTTP_202_ACCEPTED
    return record


@router.post("/shoppers/{user_id}/feedback", response_model=FeedbackRecord, status_code=201, responses={**PUBLIC, **_QUEUED}, tags=["shopper"], dependencies=RateLimited)
def post_feedback(user_id: UserId, body: FeedbackIn, service: Service, response: Response) -> FeedbackRecord:
    """helpful / not_helpful on a shown explanation; not_interested in an item (never shown again);
    exclude_purchase (that history item no longer drives or is cited in recommendations)."""
    record = service.record_feedback(user_id, body.kind, body.item_id, body.impression_id)
    if record.queued:
        response.status_code = status.HTTP_202_ACCEPTED
    return record


@router.get("/impressions", response_model=list[ImpressionRecord], responses={**STAFF, **_NEEDS_DATABASE}, tags=["support"])
def impressions(
    service: Service,
    _staff: SupportStaff,
    user_id: Annotated[str | None, Query(max_length=200, pattern=NO_CONTROL)] = None,
    item_id: Annotated[str | None, Query(max_length=200, pattern=NO_CONTROL)] = None,
    since: IsoTime | None = None,
    until: IsoTime | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[ImpressionRecord]:
    """Served slates, newest first (staff only): with `item_id`, only those that showed it."""
    return service.impressions(user_id, item_id, since, until, limit)


@router.get("/impressions/{impression_id}", response_model=ImpressionRecord, responses={**STAFF, 404: {"model": ErrorOut}, **_NEEDS_DATABASE}, tags=["support"])
def impression(impression_id: Annotated[str, Path(max_length=64, pattern=NO_CONTROL)], service: Service, _staff: SupportStaff) -> ImpressionRecord:
    """One served slate exactly as recorded: texts, fact tables, prompts, prompt version, model, verdicts."""
    return service.impression(impression_id)


@router.get("/shoppers/{user_id}/items/{item_id}/why-not", response_model=WhyNotOut, responses={**STAFF, **ERRORS}, tags=["support"])
def why_not(user_id: UserId, item_id: ItemId, service: Service, _staff: SupportStaff, k: K = 10) -> WhyNotOut:
    """The ranker's view only (staff): rank, score gap, counterfactuals; nothing generated or logged."""
    return why_not_out(service.why_not(user_id, item_id, k))


class TemplateOut(BaseModel):
    name: str
    versions: list[int]
    in_use: str | None = Field(description="the version label the service explains with, when it is this template")


class CompareIn(BaseModel):
    template: str = Field(min_length=1, max_length=20_000, description="the edited template (YAML, as in prompts/)")
    shoppers: int = Field(3, ge=1, le=20, description="seeded sample of shoppers whose top item both templates explain")


class TemplateRunOut(BaseModel):
    label: str
    grounded_rate: float
    fallback_rate: float
    usr: float
    mean_words: float
    seconds_per_item: float
    texts: list[str]


class CompareOut(BaseModel):
    item_ids: list[str]
    current: TemplateRunOut
    candidate: TemplateRunOut
    diff: str


def _run_out(run: TemplateRun) -> TemplateRunOut:
    m = run.metrics()
    return TemplateRunOut(
        label=run.label, grounded_rate=m.grounded_rate, fallback_rate=m.fallback_rate, usr=m.usr, mean_words=m.mean_words,
        seconds_per_item=m.seconds_per_item, texts=[e.text for e in run.explanations],
    )


@router.get("/prompts", response_model=list[TemplateOut], responses=STAFF, tags=["prompt lab"])
def prompts(service: Service, settings: Annotated[Settings, Depends(get_settings)], _staff: PromptEngineer) -> list[TemplateOut]:
    """Prompt templates and their versions (prompt engineers only)."""
    in_use = service.recommender.explainer.template
    found = templates(settings)
    return [TemplateOut(name=n, versions=sorted(v), in_use=in_use.label if n == in_use.name else None) for n, v in sorted(found.items())]


@router.post("/prompts/compare", response_model=CompareOut, responses={**STAFF, 422: {"model": ErrorOut}}, tags=["prompt lab"])
def compare_prompts(body: CompareIn, service: Service, _staff: PromptEngineer) -> CompareOut:
    """Run an edited template and the current one on the same shoppers' fact tables (the Prompt lab's
    comparison): metrics, shown texts and the diff. Nothing is saved."""
    parse_template(body.template, source="the edited template")  # malformed: 422 before any shopper is ranked
    tables, titles = sample_tables(service.recommender, body.shoppers)
    result = compare_templates(service.recommender, body.template, tables, titles)
    return CompareOut(item_ids=[t.item_id for t in tables], current=_run_out(result.current), candidate=_run_out(result.candidate), diff=result.diff)


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
        description="Recommendations whose product is the explanation. Shopper endpoints are public (rate limited per client); support endpoints need a staff login with the support role, prompt lab endpoints one with the prompt_engineer role.",
        version="0.1.0",
    )
    app.state.service = service
    app.state.settings = settings
    app.state.accounts = load_accounts(settings)
    app.state.rate_limiter = RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst) if settings.rate_limit_per_minute else None
    app.include_router(router)
    app.include_router(catalog_router)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(StarletteHTTPException, _unreadable_body)

    @app.exception_handler(WhyrecError)
    def _user_error(_request: Request, exc: WhyrecError) -> JSONResponse:
        # The first kind it is (ItemRemoved is an UnknownItem): 404 for an id that names nothing here.
        code = next((code for kind, code in _STATUS.items() if isinstance(exc, kind)), 422)
        return JSONResponse({"detail": str(exc)}, status_code=code)

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


# ---- bad input ----


def _invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with one line naming each bad field ("body.item_id: ..."), the same shape as every other error."""
    return JSONResponse({"detail": "; ".join(_invalid_field(e) for e in exc.errors())}, status_code=422)


async def _unreadable_body(request: Request, exc: StarletteHTTPException) -> Response:
    """FastAPI answers a JSON body that is not UTF-8 with a bare, undocumented 400 ("error parsing
    the body"): it is invalid JSON like any other, so a 422 that says so."""
    if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
        return JSONResponse({"detail": f"body: not valid JSON (not UTF-8 text: byte {exc.__cause__.start} cannot be decoded)"}, status_code=422)
    return await http_exception_handler(request, exc)


def _invalid_field(error: dict) -> str:
    where = ".".join(str(part) for part in error.get("loc", ())) or "request"
    if error.get("type") == "string_pattern_mismatch":
        return f"{where}: control characters are not allowed"
    if error.get("type") == "json_invalid":
        return f"body: not valid JSON ({error.get('ctx', {}).get('error', 'decode error')})"
    return f"{where}: {error.get('msg', 'invalid')}"


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(status.HTTP_413_CONTENT_TOO_LARGE, f"request body is larger than the limit of {limit} bytes (WHYREC_MAX_BODY_BYTES)")


class BodyLimit:
    """Refuses /api request bodies over `limit` bytes with 413, by Content-Length when given and by
    counting what arrives otherwise (chunked), so an oversized body is never read whole."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):  # the Gradio views post their own state
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _send_413(send, self.limit)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)  # FastAPI re-raises HTTPExceptions from body reading: a 413
            return message

        await self.app(scope, limited_receive, send)


async def _send_413(send, limit: int) -> None:
    body = json.dumps({"detail": BodyTooLarge(limit).detail}).encode()
    await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
