"""The one place that wires retrieval, ranker and explainer together to answer a shopper."""

from __future__ import annotations

import copy
import functools
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Callable

from readerwriterlock import rwlock

from whyrec.core.catalog import Catalog, EventKind, Interaction, Item, dedupe_keep_last, strongest_kind
from whyrec.core.config import Settings
from whyrec.core.errors import UnknownItem, UnknownShopper, WhyrecError
from whyrec.core.schema import Change, Explanation, ExplanationSource, FactTable, RankedItem, RankedSlate, Recommendations, RecommendedItem, ShopperOverlay, WhyNot
from whyrec.explainer import Explainer, PromptTemplateSpec, build_fact_table, checked_template, cold_start_fact_table
from whyrec.pipeline.loading import Log, build_explainer, load_data, stderr_log
from whyrec.pipeline.manifest import TrainedManifest
from whyrec.pipeline.models import encoder_path
from whyrec.pipeline.training import load_trained
from whyrec.ranker import CrossEncoderRanker, diversify
from whyrec.retrieval import FusedRetriever, PopularItems, embed_items, load_encoder

StageTimer = Callable[[str, float], None]
TOPIC_POOL = 200  # candidates searched for items matching an asked topic


class NoHistoryLeft(WhyrecError):
    """Every item in the shopper's history was excluded ("don't use this purchase")."""


class ItemRemoved(UnknownItem):
    """The item was removed from the catalog while the shop runs: never a candidate, never explained."""

    def __init__(self, item_id: str):
        WhyrecError.__init__(self, f"item '{item_id}' was removed from the catalog")
        self.item_id = item_id


class ItemAlreadyListed(WhyrecError):
    def __init__(self, item_id: str):
        self.item_id = item_id
        super().__init__(f"item '{item_id}' is already in the catalog")


def _reading_catalog(method):
    """Runs the method under the catalog lock's read side: no item is added or removed meanwhile."""

    @functools.wraps(method)
    def locked(self: "Recommender", *args, **kwargs):
        with self._catalog_lock.gen_rlock():
            return method(self, *args, **kwargs)

    return locked


@dataclass
class Recommender:
    settings: Settings
    catalog: Catalog
    retriever: FusedRetriever
    ranker: CrossEncoderRanker
    explainer: Explainer
    # Called with ("retrieval" | "ranking" | "explanation", seconds) after each stage (the service's metrics).
    stage_timer: StageTimer | None = None
    # What `whyrec train` recorded about the loaded models (None: stages handed in without one).
    manifest: TrainedManifest | None = None
    _popular: PopularItems | None = field(default=None, init=False, repr=False)  # counted on first use
    # Live catalog changes (add_item, remove_item). A removed item stays in catalog.items, since
    # shoppers' histories may still name it, and is listed here.
    catalog_version: int = field(default=0, init=False)  # one more after each change: what cached slates were ranked on
    _removed: set[str] = field(default_factory=set, init=False, repr=False)
    # Requests rank side by side; a catalog change waits for the rankings in flight and goes before
    # new ones (writer priority), so no ranking sees an item half added or removed.
    _catalog_lock: rwlock.RWLockWrite = field(default_factory=rwlock.RWLockWrite, init=False, repr=False)
    _encoder: object | None = field(default=None, init=False, repr=False)  # loaded on the first added item
    _encoder_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @classmethod
    def load(cls, settings: Settings, log: Log = stderr_log) -> "Recommender":
        started = time.time()
        catalog = load_data(settings)
        trained = load_trained(settings, catalog, log=log)
        explainer = build_explainer(settings, log=log)
        log(f"whyrec ready on {catalog!r} in {time.time() - started:.1f}s")
        return cls(settings, catalog, trained.retriever, trained.ranker, explainer, manifest=trained.manifest)

    def recommend(
        self, user_id: str, k: int = 10, not_interested: frozenset[str] = frozenset(), overlay: ShopperOverlay | None = None
    ) -> Recommendations:
        """The top k for a shopper: never an item they bought or marked "not interested"."""
        overlay = overlay or ShopperOverlay()
        if not_interested:
            overlay = replace(overlay, not_interested=overlay.not_interested | not_interested)
        return Recommendations(user_id, self.explain_slate(self.rank(user_id, k, overlay)))

    @_reading_catalog
    def rank(
        self, user_id: str, k: int = 10, overlay: ShopperOverlay | None = None, topic: frozenset[str] = frozenset(), cold_start: bool = False
    ) -> RankedSlate:
        """The slate and its fact tables, before any text is generated. `topic` (lower-case words)
        narrows the candidates to items whose text contains one of them, when any does. With
        `cold_start`, a shopper with no usable history (never seen, or every purchase excluded) gets
        popular and new items instead of an error."""
        if k < 1:
            raise ValueError("k must be at least 1")
        try:
            events, history, exclude = self._shopper(user_id, overlay)
        except (UnknownShopper, NoHistoryLeft):
            if not cold_start:
                raise
            return self._cold_start_slate(user_id, k, overlay or ShopperOverlay(), topic)
        n = max(self.settings.candidates, k)
        with self._stage("retrieval"):
            pool = self.retriever.candidates(history, max(n, TOPIC_POOL) if topic else n, exclude)
            matching = [c for c in pool if _mentions(self.catalog.items[c.item_id], topic)] if topic else []
            candidates = matching[:n] or pool[:n]
        with self._stage("ranking"):
            ranked = self.ranker.rank(self._items(history), candidates, self.catalog.items)
            slate = self._slate(ranked, k)
            attributed = self.ranker.with_attributions(self._items(history), ranked, {r.item_id for r in slate}, self.catalog.items, self.retriever)
        by_id = {r.item_id: r for r in attributed}
        items = [by_id[r.item_id] for r in slate]
        tables = self._fact_tables(user_id, events, history, items)
        return RankedSlate(user_id, tuple(history), tuple(items), tuple(tables), topic_matched=bool(matching))

    def explain_slate(self, slate: RankedSlate, positions: list[int] | None = None, deadline: float | None = None, wait: bool = True) -> list[RecommendedItem]:
        """Explanations for the slate's items (or those at `positions`), generated as one batch
        (template reasons, without the generator, for a cold-start slate). `deadline` (a
        time.monotonic() value) bounds the wait: items not explained by then get the template sentence.
        Without `wait`, nothing is generated: each item gets its stored text, else its checked
        template marked pending (the background explainer writes the rest)."""
        positions = list(range(len(slate.items))) if positions is None else positions
        tables = [slate.tables[i] for i in positions]
        with self._stage("explanation"):
            if slate.cold_start:
                explanations = [self._template_reason(t) for t in tables]
            elif not wait:
                explanations = [found or self.explainer.pending(t) for t, found in zip(tables, self.explainer.stored(tables))]
            else:
                explanations = self.explainer.explain(tables, _seconds_left(deadline))
        return [self._recommended(slate.items[i], e, t) for i, e, t in zip(positions, explanations, tables)]

    def explain(self, user_id: str, item_id: str, overlay: ShopperOverlay | None = None, deadline: float | None = None) -> RecommendedItem:
        """The explanation for any item, also one outside the shopper's top-k: it is ranked among the candidates."""
        with self._catalog_lock.gen_rlock():  # not over the generation: a catalog change waits for rankings only
            ranking = self._rank_including(user_id, item_id, overlay, self.settings.candidates)
            table = self._target_table(user_id, ranking)
        return self._explained(ranking, table, deadline)

    @_reading_catalog
    def why_not(self, user_id: str, item_id: str, k: int = 10, overlay: ShopperOverlay | None = None) -> WhyNot:
        """Where an item stands against the k items the shopper would be shown now, and what would
        change that: counterfactuals from the ranker, no generated text."""
        overlay = overlay or ShopperOverlay()
        return self._why_not(user_id, self._rank_including(user_id, item_id, overlay, k), k, overlay)

    def explain_and_why_not(
        self, user_id: str, item_id: str, k: int = 10, overlay: ShopperOverlay | None = None, deadline: float | None = None
    ) -> tuple[RecommendedItem, WhyNot]:
        """`explain` and `why_not` of one item from one ranking (what an agent or shopper asking
        "why this?" is shown)."""
        overlay = overlay or ShopperOverlay()
        with self._catalog_lock.gen_rlock():  # not over the generation, as in explain()
            ranking = self._rank_including(user_id, item_id, overlay, k)
            table, why_not = self._target_table(user_id, ranking), self._why_not(user_id, ranking, k, overlay)
        return self._explained(ranking, table, deadline), why_not

    def listed(self, item_id: str) -> bool:
        """The item is in the catalog and not removed: a candidate for every shopper."""
        return item_id in self.catalog.items and item_id not in self._removed

    def check_listed(self, item_id: str) -> None:
        """Raises UnknownItem (ItemRemoved for a removed item) unless the item is listed."""
        self.catalog.item(item_id)  # UnknownItem
        if item_id in self._removed:
            raise ItemRemoved(item_id)

    def add_item(self, item: Item) -> None:
        """A new item (or a removed one back, with these fields) is a candidate from the next request
        on, found by its text: it is embedded with the retrieval encoder and added to the item
        index. Co-occurrence and the sequence model learn it at the next `whyrec train` (with the
        item in the shop's data); until then they are neutral about it. Raises ItemAlreadyListed,
        changing nothing, when the item is listed."""
        if self.listed(item.item_id):
            raise ItemAlreadyListed(item.item_id)
        vector = embed_items(self._item_encoder(), [item], show_progress=False)  # before the lock: requests go on meanwhile
        with self._catalog_lock.gen_wlock():
            if self.listed(item.item_id):  # added by another thread meanwhile
                raise ItemAlreadyListed(item.item_id)
            # A new mapping rather than an edit of the one a view may be iterating (and may share).
            self.catalog = _with_item(self.catalog, item)
            self.retriever.add_items([item.item_id], vector)
            self._removed.discard(item.item_id)
            self.catalog_version += 1

    def remove_item(self, item_id: str) -> None:
        """The item is never a candidate or explained again (it may stay in shoppers' histories).
        Raises UnknownItem (ItemRemoved when it was removed before), changing nothing, unless it is listed."""
        with self._catalog_lock.gen_wlock():
            self.check_listed(item_id)
            self.retriever.remove_items([item_id])
            self._removed.add(item_id)
            self.catalog_version += 1

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The names of `RankedItem.features`: the candidate sources' scores, in order."""
        return self.retriever.feature_names

    def _target_table(self, user_id: str, ranking: "_Ranking") -> FactTable:
        return self._fact_tables(user_id, ranking.events, ranking.history, [ranking.target])[0]

    def _explained(self, ranking: "_Ranking", table: FactTable, deadline: float | None) -> RecommendedItem:
        with self._stage("explanation"):
            explanation = self.explainer.explain([table], _seconds_left(deadline))[0]
        return self._recommended(ranking.target, explanation, table)

    def _why_not(self, user_id: str, ranking: "_Ranking", k: int, overlay: ShopperOverlay) -> WhyNot:
        events, history, target, item_id = ranking.events, ranking.history, ranking.target, ranking.target.item_id
        # The slate is what recommend() would show: only the items the candidate stage proposed.
        eligible = [r for r in ranking.ranked if r.item_id in ranking.proposed]
        slate = self._slate(eligible, k)
        shown = any(r.item_id == item_id for r in slate)
        last = slate[-1] if slate else None
        gap = (last.ranker_score - target.ranker_score) if last else 0.0
        table = self._fact_tables(user_id, events, history, [target])[0]
        changes = self._changes(item_id, target, overlay, events, k, shown, gap, eligible)
        return WhyNot(target, self.catalog.items[item_id].title, table, k, shown, last, gap, tuple(changes))

    def history_events(self, user_id: str, overlay: ShopperOverlay | None = None) -> list[Interaction]:
        """The shopper's events as the recommender reads them: posted events added, excluded purchases left out."""
        return self._shopper(user_id, overlay)[0]

    def prompt_messages(self, table: FactTable) -> list[tuple[str, str]]:
        """The exact messages the generator receives for this table (first attempt)."""
        return self.explainer.render(table)

    def explainer_for(self, template: PromptTemplateSpec) -> Explainer:
        """An explainer with another template on the same loaded generator (the Prompt lab)."""
        return Explainer(self.explainer.chat_model, template, self.explainer.model_name, concurrency=self.settings.llm_concurrency)

    def _shopper(self, user_id: str, overlay: ShopperOverlay | None) -> tuple[list[Interaction], list[str], set[str]]:
        """The shopper's events and history with the overlay applied, and the items never to recommend."""
        overlay = overlay or ShopperOverlay()
        try:
            events = list(self.catalog.events(user_id))
        except UnknownShopper:
            if not overlay.events:
                raise
            events = []  # a new shopper, known only from events posted to the service
        events = [e for e in [*events, *overlay.events] if e.item_id not in overlay.excluded_history]
        history = dedupe_keep_last(e.item_id for e in events)
        if not history:
            raise NoHistoryLeft(f"shopper '{user_id}' has no history left to recommend from: every item in it was excluded")
        purchased = {e.item_id for e in events if e.kind is EventKind.PURCHASE}
        return events, history, purchased | overlay.not_interested | overlay.excluded_history

    def _rank_including(self, user_id: str, item_id: str, overlay: ShopperOverlay | None, n: int) -> "_Ranking":
        """The shopper's top-n candidates plus `item_id`, ranked, with attributions for `item_id`."""
        events, history, exclude = self._shopper(user_id, overlay)
        self.check_listed(item_id)
        with self._stage("retrieval"):
            candidates = self.retriever.candidates(history, max(self.settings.candidates, n), exclude)
            proposed = frozenset(c.item_id for c in candidates)
            if item_id not in proposed:
                candidates.append(self.retriever.candidate(history, item_id))
        with self._stage("ranking"):
            ranked = self.ranker.rank(self._items(history), candidates, self.catalog.items, attribute={item_id}, source=self.retriever)
        target = next(r for r in ranked if r.item_id == item_id)
        return _Ranking(events, history, ranked, target, proposed)

    def _changes(
        self, item_id: str, target: RankedItem, overlay: ShopperOverlay, events: list[Interaction], k: int, shown: bool, gap: float, eligible: list[RankedItem]
    ) -> list[Change]:
        title = self.catalog.items[item_id].title
        if item_id in overlay.excluded_history:
            return [Change("blocked", f'The shopper asked not to use "{title}" for recommendations, so it is never shown.')]
        if item_id in overlay.not_interested:
            return [Change("blocked", f'The shopper marked "{title}" "not interested", so it is never shown.')]
        if any(e.item_id == item_id and e.kind is EventKind.PURCHASE for e in events):
            return [Change("blocked", f'The shopper already bought "{title}", so it is never recommended.')]
        if shown:
            return []
        changes = []
        for a in target.attributions:
            if a.contribution < 0 and a.rank_without is not None and a.rank_without < target.rank:
                name = self.catalog.items[a.history_item_id].title
                verdict = "and be shown" if a.rank_without <= k else "(still below the top " + str(k) + ")"
                changes.append(Change("leave_out_history_item", f'Without "{name}" in the history it would rank #{a.rank_without} {verdict}.', a.history_item_id, a.rank_without))
        above = sum(1 for r in eligible if r.ranker_score > target.ranker_score and r.item_id != item_id)
        if above >= k:
            needed = above - (k - 1)
            changes.append(Change("remove_items_above", f"It would be shown if {needed} of the {above} items ranked above it were marked not interested.", None, k))
        changes.append(Change("score_needed", f"Its score would have to rise by {gap:.3f} to reach the last shown item."))
        return changes

    def _cold_start_slate(self, user_id: str, k: int, overlay: ShopperOverlay, topic: frozenset[str]) -> RankedSlate:
        if self._popular is None:
            self._popular = PopularItems(self.catalog.interactions)
        popular = self._popular
        bought = {e.item_id for e in overlay.events if e.kind is EventKind.PURCHASE}
        exclude = bought | overlay.not_interested | overlay.excluded_history | self._removed
        with self._stage("retrieval"):
            matching = popular.pick(k, exclude, lambda i: _mentions(self.catalog.items[i], topic)) if topic else []
            picks = matching or popular.pick(k, exclude)
        items, tables = [], []
        for rank, p in enumerate(picks, start=1):
            ranked = RankedItem(p.item_id, rank, float(p.shoppers), 0.0, candidates_scored=len(picks))  # no ranker involved
            first_seen = f"{p.first_seen:%Y-%m-%d}" if p.new and p.first_seen else None
            items.append(ranked)
            tables.append(cold_start_fact_table(user_id, self.catalog.items[p.item_id], ranked, p.shoppers, popular.total_shoppers, first_seen))
        return RankedSlate(user_id, (), tuple(items), tuple(tables), topic_matched=bool(matching), cold_start=True)

    def _template_reason(self, table: FactTable) -> Explanation:
        text, facts = checked_template(table)
        return Explanation(text, ExplanationSource.TEMPLATE, False, facts, self.explainer.template.label, "")

    def _slate(self, ranked: list[RankedItem], k: int) -> list[RankedItem]:
        return diversify(ranked, self.retriever.index.vector, k, self.settings.diversity)

    def _item_encoder(self):
        """The retrieval encoder, loaded on first use: a serving process reads the catalog's vectors
        from the embedding cache and needs it only for items added while it runs."""
        with self._encoder_lock:
            if self._encoder is None:
                self._encoder = load_encoder(encoder_path(self.settings), self.settings.resolved_device())
            return self._encoder

    def _stage(self, name: str):
        return _timed(name, self.stage_timer)

    def _items(self, item_ids: list[str]) -> list[Item]:
        return [self.catalog.items[i] for i in item_ids]

    def _fact_tables(self, user_id: str, events: list[Interaction], history: list[str], ranked: list[RankedItem]) -> list[FactTable]:
        # The window the ranker's attributions read, which loading checked against the manifest.
        recent_ids = history[-self.ranker.history_window :]
        recent = [(self.catalog.items[i], strongest_kind(events, i)) for i in recent_ids]
        try:
            counted = self.catalog.events(user_id)  # the shopper's own part of the shop's counts
        except UnknownShopper:
            counted = []
        evidence = self.retriever.evidence(recent_ids, [r.item_id for r in ranked], counted)
        return [
            build_fact_table(user_id, self.catalog.items[r.item_id], r, recent, [e for (_, i), e in evidence.items() if i == r.item_id])
            for r in ranked
        ]

    def _recommended(self, ranked: RankedItem, explanation: Explanation, table: FactTable) -> RecommendedItem:
        return RecommendedItem(ranked.item_id, self.catalog.items[ranked.item_id].title, ranked, explanation, table)


@dataclass(frozen=True)
class _Ranking:
    events: list[Interaction]
    history: list[str]
    ranked: list[RankedItem]
    target: RankedItem
    proposed: frozenset[str]  # what the candidate stage proposed on its own (without the asked item)


def _with_item(catalog: Catalog, item: Item) -> Catalog:
    """The catalog with this item added or replaced; the events are shared, not copied."""
    changed = copy.copy(catalog)
    changed.items = {**catalog.items, item.item_id: item}
    return changed


def _seconds_left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


@contextmanager
def _timed(stage: str, timer: StageTimer | None):
    started = time.perf_counter()
    try:
        yield
    finally:
        if timer is not None:
            timer(stage, time.perf_counter() - started)


def topic_words(text: str) -> frozenset[str]:
    """The content words of a shopper's request ("something for my desk" -> {"desk"})."""
    return frozenset(w for w in re.findall(r"[a-z0-9]+", text.lower()) if len(w) > 2 and w not in _REQUEST_WORDS)


_REQUEST_WORDS = frozenset(
    """show me something anything some for my the and any what with you can could please want need looking
    find get give recommend recommendations suggest suggestions ideas idea items item products product new more other
    like would about that this these those have has are was buy shop shopping stuff things thing good best""".split()
)


def _mentions(item: Item, words: frozenset[str]) -> bool:
    text = set(re.findall(r"[a-z0-9]+", item.text().lower()))
    return any(w in text or w.rstrip("s") in text or w + "s" in text for w in words)
