"""What the JSON API and the Gradio views both call: the recommender with each shopper's events and
feedback laid over their history, every served slate written to the impression log, and the
service's metrics."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Callable, Iterator

from whyrec.core.catalog import EventKind, Interaction, dedupe_keep_last
from whyrec.core.errors import WhyrecError
from whyrec.core.protocol import EventRecord, FeedbackKind, FeedbackRecord, ImpressionRecord
from whyrec.core.schema import FactTable, RankedSlate, RecommendedItem, WhyNot
from whyrec.pipeline import ExplanationStore, Recommender, topic_words
from whyrec.service.background import BackgroundExplainer
from whyrec.service.catalog_changes import POLL_S, CatalogChangeLog, LiveCatalog
from whyrec.service.jobqueue import JobQueue, SlateJob
from whyrec.service.store import DatabaseUnavailable, Store
from whyrec.service.telemetry import ServiceMetrics


class InvalidFeedback(WhyrecError):
    """Feedback that cannot apply (no item given, an item the shopper never had, ...)."""


class EventLimitReached(WhyrecError):
    """A shopper posted as many events as the service keeps (WHYREC_MAX_EVENTS_PER_SHOPPER)."""


@dataclass(frozen=True)
class ServedSlate:
    impression: ImpressionRecord
    items: list[RecommendedItem]
    topic_matched: bool  # the shopper's words narrowed the candidates
    cold_start: bool = False  # no usable history: popular and new items with template reasons


@dataclass(frozen=True)
class SlateRanked:
    """Streaming: the slate is known, its explanations are coming."""

    slate: RankedSlate
    titles: list[str]


@dataclass(frozen=True)
class ItemExplained:
    """Streaming: one item's explanation is ready (in completion order)."""

    position: int  # 0-based place in the slate
    item: RecommendedItem


@dataclass(frozen=True)
class SlateLogged:
    """Streaming: every explanation was shown and the slate is in the impression log."""

    served: ServedSlate


@dataclass(frozen=True)
class ServedExplanation:
    impression: ImpressionRecord
    item: RecommendedItem
    why_not: WhyNot


class WhyrecService:
    def __init__(self, recommender: Recommender, store: Store, metrics: ServiceMetrics, catalog_poll_s: float = POLL_S):
        self.recommender = recommender
        self.store = store
        self.metrics = metrics
        recommender.stage_timer = metrics.observe_stage
        # Staff catalog changes are kept in this database: replayed now, then picked up (from other
        # replicas and `whyrec catalog`) by the requests that rank.
        self.live_catalog = LiveCatalog(CatalogChangeLog(store.engine), recommender, catalog_poll_s)
        self.live_catalog.catch_up()
        # The explainer's in-memory cache is the front of the explanation store in this service's
        # database: texts outlive restarts and are shared by the replicas on one database.
        cache = recommender.explainer.cache
        cache.store = ExplanationStore(store.engine)
        metrics.queued_writes.set_function(lambda: store.queued)
        metrics.explanation_lookups.labels("memory").set_function(lambda: cache.hits)
        metrics.explanation_lookups.labels("store").set_function(lambda: cache.store_hits)
        metrics.explanation_lookups.labels("miss").set_function(lambda: cache.misses)
        metrics.explanation_hit_rate.set_function(lambda: cache.hit_rate)
        settings = recommender.settings
        self._slates = _SlateCache(settings.slate_cache_size)
        # Several API replicas share one queue on their database (run by `whyrec worker`), so that
        # each explanation is generated once; one `whyrec serve` runs its own thread.
        self.background: BackgroundExplainer | JobQueue
        if settings.job_queue == "postgres":
            self.background = JobQueue(store.url, settings.background_queue)
        else:
            self.background = BackgroundExplainer(
                lambda tables: recommender.explainer.explain(tables), self._state, recommender.explainer.missing, settings.background_queue
            )
        metrics.background_depth.set_function(lambda: self.background.depth)
        metrics.background_running.set_function(lambda: self.background.running)
        metrics.background_lag.set_function(lambda: self.background.lag_s)
        metrics.background_jobs.labels("done").set_function(lambda: self.background.stats.done)
        metrics.background_jobs.labels("stale").set_function(lambda: self.background.stats.stale)
        metrics.background_jobs.labels("refused").set_function(lambda: self.background.stats.refused)
        metrics.background_jobs.labels("failed").set_function(lambda: self.background.stats.failed)
        metrics.background_jobs.labels("interrupted").set_function(lambda: self.background.stats.interrupted)

    @property
    def catalog(self):
        return self.recommender.catalog

    def recommend(self, user_id: str, k: int, request: str = "") -> ServedSlate:
        """A slate with explanations, logged. `request` is the shopper's words ("something for my desk").
        A shopper the shop has never seen, or with every purchase excluded, gets popular and new items."""
        deadline = self._deadline()
        topic = topic_words(request)
        with self.background.live():
            slate = self._ranked(user_id, k, topic)
        if self.recommender.settings.page_waits_for_model:
            return self._log(slate, self.recommender.explain_slate(slate, deadline=deadline))
        items = self.recommender.explain_slate(slate, wait=False)
        self._explain_later(slate, items, k, topic)
        return self._log(slate, items)

    def prewarm(self, shoppers: int, k: int) -> int:
        """Queue the most recently active shoppers (then the shop's first ones) for the background
        explainer, so their first page already shows model texts; the number queued."""
        recent = [i.user_id for i in self.store.impressions(limit=shoppers * 4)]
        chosen = list(dict.fromkeys(recent + self.catalog.users))[:shoppers]
        return sum(self._next_slate_later(u, k) for u in chosen)

    def close(self) -> None:
        self.background.close()

    def _state(self, user_id: str) -> str:
        """The shopper's history as the recommender reads it: a job made for another state is stale."""
        return _state_of(self.store.overlay(user_id))

    def explain_next_slate(self, job: SlateJob) -> int | None:
        """A `whyrec worker`'s job: the shopper's slate ranked and its missing explanations
        generated and stored; how many, or None when the job is stale (the shopper's history
        changed since it was queued)."""
        if self._state(job.user_id) != job.state:
            return None
        slate = self._ranked(job.user_id, job.k, frozenset(job.topic))
        todo = [] if slate.cold_start else self.recommender.explainer.missing(list(slate.tables))
        if todo:
            self.recommender.explainer.explain(todo)
        return len(todo)

    def _ranked(self, user_id: str, k: int, topic: frozenset[str]) -> RankedSlate:
        """The shopper's slate for their current state: ranked once (by the page or the background
        explainer) and kept, so a warm page costs lookups, not a ranker pass."""
        self.live_catalog.catch_up()
        overlay = self.store.overlay(user_id)
        key = (user_id, _state_of(overlay), k, topic, self.recommender.catalog_version)
        found = self._slates.get(key)
        if found is not None:
            return found
        slate = self.recommender.rank(user_id, k, overlay, topic, cold_start=True)
        self._slates.put(key, slate)
        return slate

    def _explain_later(self, slate: RankedSlate, items: list[RecommendedItem], k: int, topic: frozenset[str]) -> None:
        if not slate.cold_start and any(i.explanation.pending for i in items):
            tables = [t for t, i in zip(slate.tables, items) if i.explanation.pending]
            self._queue(slate.user_id, k, topic, lambda: tables, first=True)

    def _next_slate_later(self, user_id: str, k: int) -> bool:
        def tables() -> list:
            slate = self._ranked(user_id, k, frozenset())
            return [] if slate.cold_start else list(slate.tables)

        return self._queue(user_id, k, frozenset(), tables)

    def _queue(self, user_id: str, k: int, topic: frozenset[str], tables: Callable[[], list[FactTable]], first: bool = False) -> bool:
        """In process the job is `tables` (what to explain, computed when it runs); on the job
        queue, the slate it names, which a worker ranks itself."""
        if isinstance(self.background, JobQueue):
            return self.background.submit(SlateJob(user_id=user_id, state=self._state(user_id), k=k, topic=tuple(sorted(topic))), first)
        return self.background.submit(user_id, tables, first)

    def stream(self, user_id: str, k: int, request: str = "") -> Iterator[SlateRanked | ItemExplained | SlateLogged]:
        """The same slate as recommend(), yielded as it is made: the ranked items first, then each
        explanation as soon as it has passed (or failed) its check, then the logged impression."""
        deadline = self._deadline()
        topic = topic_words(request)
        with self.background.live():
            slate = self._ranked(user_id, k, topic)
        yield SlateRanked(slate, [self.catalog.items[r.item_id].title for r in slate.items])
        if not self.recommender.settings.page_waits_for_model:
            yield from self._stream_from_background(slate, deadline, k, topic)
            return
        done: dict[int, RecommendedItem] = {}
        workers = max(1, min(len(slate.items), self.recommender.settings.llm_concurrency))
        with ThreadPoolExecutor(workers) as pool:
            futures = {pool.submit(self.recommender.explain_slate, slate, [i], deadline): i for i in range(len(slate.items))}
            for future in as_completed(futures):
                position = futures[future]
                done[position] = future.result()[0]
                yield ItemExplained(position, done[position])
        yield SlateLogged(self._log(slate, [done[i] for i in range(len(slate.items))]))

    def _stream_from_background(self, slate: RankedSlate, deadline: float, k: int, topic: frozenset[str]) -> Iterator[ItemExplained | SlateLogged]:
        """Every item at once (its stored text, or its checked template marked pending), then each
        model text as the background explainer stores it, until the deadline; then the log entry."""
        shown = self.recommender.explain_slate(slate, wait=False)
        # Queued before the first yield: the consumer (the Shop view renders each event) sets the pace.
        self._explain_later(slate, shown, k, topic)
        for position, item in enumerate(shown):
            yield ItemExplained(position, item)
        waiting = [i for i, item in enumerate(shown) if item.explanation.pending]
        seen = 0  # texts stored so far: the first wait returns at once if any were
        while waiting and time.monotonic() < deadline:
            seen = self.recommender.explainer.wait_for_stored(seen, min(1.0, deadline - time.monotonic()))
            found = self.recommender.explainer.stored([slate.tables[i] for i in waiting], count=False)
            for position, explanation in zip(list(waiting), found):
                if explanation is not None:
                    shown[position] = replace(shown[position], explanation=explanation)
                    waiting.remove(position)
                    yield ItemExplained(position, shown[position])
        yield SlateLogged(self._log(slate, shown))

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The names of each served item's per-source retrieval scores (`RankedItem.features`)."""
        return self.recommender.feature_names

    def explain(self, user_id: str, item_id: str, k: int) -> ServedExplanation:
        """Why an item is (or is not) in the shopper's top k, with its explanation; logged as shown."""
        deadline = self._deadline()
        self.live_catalog.catch_up()
        overlay = self.store.overlay(user_id)
        entry, why_not = self.recommender.explain_and_why_not(user_id, item_id, k, overlay, deadline)
        history = self.recommender.history_events(user_id, overlay)
        impression = self.store.log_impression(
            user_id, "explain", _ids(history), [entry], [self.recommender.prompt_messages(entry.fact_table)], self.feature_names
        )
        self._count_explanation(entry)
        return ServedExplanation(impression, entry, why_not)

    def why_not(self, user_id: str, item_id: str, k: int) -> WhyNot:
        """Rank, score gap and counterfactuals only (no generated text, nothing logged): the agent's question."""
        return self.recommender.why_not(user_id, item_id, k, self.store.overlay(user_id))

    def history(self, user_id: str) -> list[Interaction]:
        """The shopper's events as the recommender reads them now (posted events in, excluded purchases out)."""
        return self.recommender.history_events(user_id, self.store.overlay(user_id))

    def record_event(self, user_id: str, item_id: str, kind: EventKind) -> EventRecord:
        self.catalog.item(item_id)
        limit = self.recommender.settings.max_events_per_shopper
        if self.store.event_count(user_id) >= limit:
            raise EventLimitReached(f"shopper '{user_id}' has posted {limit} events, the most this service keeps per shopper (WHYREC_MAX_EVENTS_PER_SHOPPER)")
        record = self.store.add_event(user_id, item_id, kind)
        self.metrics.events.labels(kind.value).inc()
        if not self.recommender.settings.page_waits_for_model:
            self._next_slate_later(user_id, self.recommender.settings.shop_k)
        return record

    def record_feedback(self, user_id: str, kind: FeedbackKind, item_id: str | None = None, impression_id: str | None = None) -> FeedbackRecord:
        if item_id is None:
            raise InvalidFeedback(f"feedback '{kind.value}' needs an item_id")
        self.catalog.item(item_id)
        # Only "don't use this purchase" needs a history (an unknown shopper is a 404 there); a new
        # shopper may mark a popular item "not interested" or rate its reason.
        if kind is FeedbackKind.EXCLUDE_PURCHASE and item_id not in _ids(self.history(user_id)):
            raise InvalidFeedback(f"item '{item_id}' is not in shopper '{user_id}''s history, so there is no purchase to stop using")
        if kind in (FeedbackKind.HELPFUL, FeedbackKind.NOT_HELPFUL):
            if impression_id is None:
                raise InvalidFeedback(f"feedback '{kind.value}' is about a shown explanation: give the impression_id it was shown in")
            try:
                shown = self.store.impression(impression_id)
            except DatabaseUnavailable:
                shown = None  # accepted and queued; the store checks the impression when it writes it
            if shown is not None and (shown.user_id != user_id or item_id not in {i.item_id for i in shown.items}):
                raise InvalidFeedback(f"impression '{impression_id}' did not show item '{item_id}' to shopper '{user_id}'")
        record = self.store.add_feedback(user_id, kind, item_id, impression_id)
        self.metrics.feedback.labels(kind.value).inc()
        return record

    def impressions(
        self, user_id: str | None = None, item_id: str | None = None, since: datetime | None = None, until: datetime | None = None, limit: int = 50
    ) -> list[ImpressionRecord]:
        return self.store.impressions(user_id, item_id, since, until, limit)

    def impression(self, impression_id: str) -> ImpressionRecord:
        return self.store.impression(impression_id)

    def _deadline(self) -> float:
        """When a request's explanations must be done by (time.monotonic())."""
        return time.monotonic() + self.recommender.settings.explain_deadline_s

    def _count_explanation(self, entry: RecommendedItem) -> None:
        self.metrics.explanations.labels(entry.explanation.source.value).inc()
        if entry.explanation.fallback is not None:
            self.metrics.explanation_fallbacks.labels(entry.explanation.fallback.value).inc()

    def _log(self, slate: RankedSlate, items: list[RecommendedItem]) -> ServedSlate:
        # A cold-start slate's reasons are template sentences: no prompt was sent.
        prompts = [[] if slate.cold_start else self.recommender.prompt_messages(t) for t in slate.tables]
        impression = self.store.log_impression(slate.user_id, "slate", list(slate.history), items, prompts, self.feature_names)
        for entry in items:
            self._count_explanation(entry)
        return ServedSlate(impression, items, slate.topic_matched, slate.cold_start)


def _state_of(overlay) -> str:
    return hashlib.sha1(repr((overlay.events, sorted(overlay.not_interested), sorted(overlay.excluded_history))).encode()).hexdigest()


class _SlateCache:
    """Ranked slates by (shopper, state, k, topic words), least recently used out first."""

    def __init__(self, max_size: int):
        self.max_size = max_size
        self._entries: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key) -> RankedSlate | None:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
            return found

    def put(self, key, slate: RankedSlate) -> None:
        with self._lock:
            self._entries[key] = slate
            while len(self._entries) > self.max_size:
                self._entries.popitem(last=False)


def _ids(events: list[Interaction]) -> list[str]:
    return dedupe_keep_last(e.item_id for e in events)
