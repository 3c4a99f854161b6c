"""The one place that wires retrieval, ranker and explainer together."""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import re
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from whyrec import models
from whyrec.catalog import Catalog, EventKind, Interaction, Item, dedupe_keep_last, fingerprint, strongest_kind
from whyrec.config import Settings
from whyrec.errors import ConfigError, UnknownShopper, WhyrecError
from whyrec.explainer import Explainer, PromptTemplateSpec, build_fact_table, checked_template, cold_start_fact_table, load_template, make_chat_model
from whyrec.explainer.cache import ExplanationCache
from whyrec.loaders import load_catalog
from whyrec.ranker import CrossEncoderRanker, TrainConfig, TrainReport, diversify, train_ranker
from whyrec.ranker.feedback import FeedbackConfig, FeedbackReport, engaged_above_skipped, train_on_feedback
from whyrec.ranker.model import CHECKPOINT_META, FEATURE_SCALE
from whyrec.retrieval import EmbeddingRetriever, ItemIndex, embed_items, load_encoder
from whyrec.retrieval.cooccurrence import CooccurrenceRetriever, FollowCounts
from whyrec.retrieval.fusion import FusedRetriever, FusionWeights, tune_weights
from whyrec.retrieval.popularity import PopularItems
from whyrec.retrieval.sequential import SequenceConfig, SequenceRetriever, refit_sequence_model, train_sequence_model
from whyrec.schema import (
    Change,
    Explanation,
    ExplanationSource,
    FactTable,
    RankedItem,
    RankedSlate,
    RecommendedItem,
    Recommendations,
    ShopperOverlay,
    ShownSlate,
    WhyNot,
)
from whyrec.split import leave_one_out

Log = Callable[[str], None]


def stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def data_folder(settings: Settings) -> Path:
    """The configured data folder, or the sample store bundled with the package."""
    if settings.data is not None:
        return Path(settings.data)
    return Path(str(importlib.resources.files("whyrec.sample_data")))


def load_data(settings: Settings) -> Catalog:
    return load_catalog(data_folder(settings))


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def cache_folder(settings: Settings, catalog: Catalog) -> Path:
    return settings.cache_dir / "data" / f"{catalog.name}-{fingerprint(catalog)}"


def models_folder(settings: Settings, catalog: Catalog) -> Path:
    """Everything trained on this data with this encoder: the sequence model and fusion weights, and the ranker."""
    return cache_folder(settings, catalog) / f"models-v3-{_short_hash(models.encoder_path(settings))}"


def ranker_folder(settings: Settings, catalog: Catalog) -> Path:
    return models_folder(settings, catalog) / "ranker"


def sequence_folder(settings: Settings, catalog: Catalog) -> Path:
    return models_folder(settings, catalog) / "sequence"


def embedding_retriever(settings: Settings, catalog: Catalog, encoder=None, log: Log = stderr_log) -> EmbeddingRetriever:
    """Embed the catalog (cached per item texts and encoder) and index it."""
    encoder_path = models.encoder_path(settings)
    item_ids = sorted(catalog.items)
    cache_file = (
        settings.cache_dir / "data" / f"{catalog.name}-items-{fingerprint(catalog, with_interactions=False)}"
        / f"embeddings-{_short_hash(encoder_path)}.npy"
    )
    if not cache_file.exists():
        log(f"embedding {len(item_ids)} items with {Path(encoder_path).name} (cached at {cache_file.parent})...")
    if encoder is None and not cache_file.exists():
        encoder = load_encoder(encoder_path, settings.resolved_device())
    try:
        vectors = embed_items(encoder, [catalog.items[i] for i in item_ids], cache_file)
    except (ValueError, OSError, EOFError) as exc:
        # A damaged cache is not silently recomputed: a file that changes under a running shop is worth knowing about.
        raise ConfigError(
            f"cannot read the item embeddings (the FAISS index's vectors) at {cache_file} ({type(exc).__name__}: {exc}); "
            f"delete it to rebuild it from the catalog on the next start: `rm {cache_file}`"
        ) from None
    index = ItemIndex(item_ids, vectors, kind=settings.index_kind, device=settings.resolved_device(settings.index_device))
    return EmbeddingRetriever(index, history_window=settings.history_window)


@dataclass
class TrainSummary:
    sequence_model: dict
    fusion_weights: dict
    candidate_recall50_valid: float  # of the tuned fusion, on the validation items
    ranker: TrainReport
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def train(
    settings: Settings,
    catalog: Catalog,
    embedding: EmbeddingRetriever,
    config: TrainConfig = TrainConfig(),
    sequence_config: SequenceConfig = SequenceConfig(),
    log: Log = stderr_log,
) -> TrainSummary:
    """Train everything that learns from the shop's interactions.

    Stacked, so that nothing is tuned on items it was fit on: the sequence model trains on the
    leave-one-out training part (early-stopped on the validation items), the fusion weights are
    tuned for candidate recall on the validation items, and the cross-encoder is fine-tuned on them
    with hard negatives from those sources. The sequence model that is saved for serving is then
    refit, for the early-stopped number of epochs, on every shopper's sequence up to their last
    item: the validation transitions are the shop's most recent ones (co-occurrence counts them at
    serving time too), and the last item stays unseen so the offline evaluation is untouched."""
    started = time.time()
    split = leave_one_out(catalog)
    train_sequences = list(split.train.values())
    valid = [(c.history, c.target) for c in split.valid]
    log(f"1/4 sequence model on {len(train_sequences)} shoppers' sequences")
    sequence, sequence_report = train_sequence_model(
        embedding.index.item_ids, train_sequences, valid, embedding.index.vectors, sequence_config, log=log
    )
    retriever = FusedRetriever(embedding, CooccurrenceRetriever(train_sequences, history_window=settings.history_window), sequence)
    weights, recall = tune_weights(retriever, valid) if valid else (FusionWeights(), 0.0)
    retriever.weights = weights
    log(f"2/4 fusion weights {asdict(weights)}: candidate recall@50 {recall:.4f} on the validation items")

    epochs = max(1, sequence_report["best_epoch"])
    # Shoppers too short to hold anything out are in the training part whole already.
    refit_sequences = list({**split.train, **{c.user_id: c.history for c in split.test}}.values())
    log(f"3/4 sequence model refit on {len(refit_sequences)} shoppers' sequences up to their last item ({epochs} epochs)")
    refit_started = time.time()
    served = refit_sequence_model(embedding.index.item_ids, refit_sequences, embedding.index.vectors, epochs, sequence_config)
    sequence_report["refit"] = {"epochs": epochs, "sequences": len(refit_sequences), "seconds": round(time.time() - refit_started, 1)}
    served.save(sequence_folder(settings, catalog), {"fusion_weights": asdict(weights), "report": sequence_report})

    log("4/4 cross-encoder ranker")
    ranker = CrossEncoderRanker.from_base(
        models.encoder_path(settings),
        settings.resolved_device(settings.ranker_device),
        history_window=settings.history_window,
        feature_names=FusedRetriever.feature_names,
        feature_weights=(weights.vector() * FEATURE_SCALE).tolist(),
    )
    report = train_ranker(
        ranker,
        catalog,
        split.valid,
        source=retriever,
        out_dir=ranker_folder(settings, catalog),
        config=config,
        metadata={"data": catalog.name, "data_fingerprint": fingerprint(catalog), "encoder": models.encoder_path(settings)},
        log=log,
    )
    return TrainSummary(sequence_report, asdict(weights), recall, report, time.time() - started)


def build_retriever(settings: Settings, catalog: Catalog, embedding: EmbeddingRetriever, sequences: list[list[str]] | None = None) -> FusedRetriever:
    """The fused candidate stage. Co-occurrence is counted on `sequences` (default: every shopper's
    whole sequence, and then the shopper counts that collaborative reasons state are counted on
    every event); the sequence model and the fusion weights come from `whyrec train`."""
    folder = sequence_folder(settings, catalog)
    if not folder.exists():
        raise ConfigError(f"no sequence model for this data at {folder}; run `whyrec train --data {data_folder(settings)}`")
    sequence = SequenceRetriever.load(folder, embedding.index.vectors)
    follows = None
    if sequences is None:
        sequences = [catalog.sequence(u) for u in catalog.users]
        follows = FollowCounts(catalog.interactions)
    cooccurrence = CooccurrenceRetriever(sequences, history_window=settings.history_window)
    return FusedRetriever(embedding, cooccurrence, sequence, FusionWeights(**sequence.metadata["fusion_weights"]), follows)


def load_models(settings: Settings, catalog: Catalog, log: Log = stderr_log, trainable: bool = False) -> tuple[FusedRetriever, CrossEncoderRanker]:
    """The candidate stage and the ranker for this data; trains them first when allowed and missing.
    The ranker is set up for serving (`WHYREC_RANKER_PRECISION`) unless it is to be `trainable`."""
    embedding = embedding_retriever(settings, catalog, log=log)
    if not (ranker_folder(settings, catalog).exists() and sequence_folder(settings, catalog).exists()):
        if not settings.auto_train:
            raise ConfigError(f"no trained models for this data at {models_folder(settings, catalog)}; run `whyrec train --data {data_folder(settings)}`")
        log(f"no trained models for {catalog.name} yet: training them now (same as `whyrec train`)...")
        train(settings, catalog, embedding, log=log)
    # Missing models are trained above (auto_train); a damaged file is an error, not a silent
    # retrain: `whyrec train` rebuilds it on purpose.
    try:
        ranker = CrossEncoderRanker.load(ranker_folder(settings, catalog), settings.resolved_device(settings.ranker_device))
        return build_retriever(settings, catalog, embedding), ranker if trainable else ranker.for_serving(settings.ranker_precision)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("`whyrec train --data DIR`", f"`whyrec train --data {data_folder(settings)}`")) from None


@dataclass
class FeedbackSummary:
    slates: int  # settled slates read from the impression log
    unknown_items: int  # slates left out because they name items no longer in the catalog
    held_out: int  # slates kept aside to measure before/after
    engaged_above_skipped_before: float  # on the held-out slates
    engaged_above_skipped_after: float
    kept: bool  # whether the fine-tuned ranker replaced the serving checkpoint
    report: FeedbackReport

    def to_dict(self) -> dict:
        return asdict(self)


def train_from_feedback(
    settings: Settings,
    catalog: Catalog,
    slates: list[ShownSlate],
    config: FeedbackConfig = FeedbackConfig(),
    held_out_every: int = 5,
    log: Log = stderr_log,
) -> FeedbackSummary:
    """Fine-tune the serving ranker on slates from the impression log (engaged vs skipped items).

    Every `held_out_every`-th shopper's slates are held out; the new checkpoint replaces the serving
    one only if it orders engaged items above skipped ones on them at least as often as the old one
    did, so feedback can move the ranker but never silently make it worse. Servers pick the new
    checkpoint up when they restart."""
    known = [s for s in slates if all(i in catalog.items for i in (*s.history, *s.shown))]
    if not known:
        raise WhyrecError(f"no usable slates: {len(slates)} settled slate(s) in the impression log, {len(slates) - len(known)} naming items not in {catalog.name}")
    held = set(sorted({s.user_id for s in known})[held_out_every - 1 :: held_out_every]) if held_out_every > 0 else set()
    train_slates, held_out = [s for s in known if s.user_id not in held], [s for s in known if s.user_id in held]
    retriever, ranker = load_models(settings, catalog, log=log, trainable=True)
    folder = ranker_folder(settings, catalog)
    previous = json.loads((folder / CHECKPOINT_META).read_text())
    before = engaged_above_skipped(ranker, catalog, held_out, retriever)
    try:
        report = train_on_feedback(ranker, catalog, train_slates, retriever, None, config, log=log)
    except ValueError as exc:
        raise WhyrecError(str(exc)) from None
    after = engaged_above_skipped(ranker, catalog, held_out, retriever)
    kept = after >= before
    if kept:
        rounds = previous.get("feedback_rounds", 0) + 1
        own = ("history_window", "max_length", "feature_names", "feature_weights", "feedback_slates", "feedback_groups")
        ranker.save(folder, {**{k: v for k, v in previous.items() if k not in own}, "feedback_rounds": rounds,
                             "feedback_slates": report.slates, "feedback_groups": report.groups})
    report.checkpoint = str(folder)
    outcome = "the serving ranker is updated" if kept else "worse, so the serving ranker is left as it was"
    log(f"engaged above skipped on {len(held_out)} held-out slates: {before:.3f} -> {after:.3f}; {outcome}")
    return FeedbackSummary(len(slates), len(slates) - len(known), len(held_out), before, after, kept, report)


def default_adapter_folder(settings: Settings, template: PromptTemplateSpec) -> Path:
    """Where `whyrec explainer tune` saves the adapter for this generator and template by default."""
    return settings.cache_dir / "adapters" / settings.generator.replace("/", "--") / f"lora-{template.label}"


def shipped_adapter_folder(settings: Settings, template: PromptTemplateSpec) -> Path:
    """The adapter that ships inside the package for this generator and template (only the default
    generator has one; `scripts/tune-adapter.sh` makes it)."""
    return Path(str(importlib.resources.files("whyrec.explainer"))) / "adapters" / settings.generator.replace("/", "--") / f"lora-{template.label}"


def resolve_adapter(settings: Settings, template: PromptTemplateSpec) -> Path | None:
    """The LoRA adapter the in-process generator loads: WHYREC_ADAPTER when set ('none' = no
    adapter), else one `whyrec explainer tune` saved for this shop's generator and template, else
    the shipped one. A server (WHYREC_LLM_URL) serves its own; only an explicit setting names it."""
    if "adapter" in settings.model_fields_set or settings.adapter is not None:
        return None if settings.adapter is None or str(settings.adapter).lower() == "none" else settings.adapter
    if settings.llm_url:
        return None
    for folder in (default_adapter_folder(settings, template), shipped_adapter_folder(settings, template)):
        if (folder / "adapter_config.json").exists():
            return folder
    return None


def build_explainer(settings: Settings, log: Log = stderr_log) -> Explainer:
    """The configured explainer, with the adapter `resolve_adapter` picks."""
    template = load_template(settings.prompt, settings.prompt_version, extra_dirs=[settings.prompts_dir] if settings.prompts_dir else [])
    settings = settings.model_copy(update={"adapter": resolve_adapter(settings, template)})
    generator = None if settings.llm_url else models.generator_path(settings, progress=log)
    chat_model, model_name = make_chat_model(settings, generator)
    cache = ExplanationCache(settings.explanation_cache_size)
    return Explainer(chat_model, template, model_name, concurrency=settings.llm_concurrency, cache=cache, max_late=settings.llm_max_late,
                     model_key=_model_key(model_name, settings.adapter))


def _model_key(model_name: str, adapter: Path | None) -> str:
    """The model name with a digest of the adapter's weights: what stored explanations are keyed on."""
    weights = Path(adapter) / "adapter_model.safetensors" if adapter else None
    if weights is None or not weights.exists():
        return model_name
    return f"{model_name}@{hashlib.sha256(weights.read_bytes()).hexdigest()[:12]}"


StageTimer = Callable[[str, float], None]
TOPIC_POOL = 200  # candidates searched for items matching an asked topic


class NoHistoryLeft(WhyrecError):
    """Every item in the shopper's history was excluded ("don't use this purchase")."""


@dataclass
class Recommender:
    settings: Settings
    catalog: Catalog
    retriever: FusedRetriever
    ranker: CrossEncoderRanker
    explainer: Explainer
    # Called with ("retrieval" | "ranking" | "explanation", seconds) after each stage (the service's metrics).
    stage_timer: StageTimer | None = None
    _popular: PopularItems | None = field(default=None, init=False, repr=False)  # counted on first use

    @classmethod
    def load(cls, settings: Settings, log: Log = stderr_log) -> "Recommender":
        started = time.time()
        catalog = load_data(settings)
        retriever, ranker = load_models(settings, catalog, log=log)
        explainer = build_explainer(settings, log=log)
        log(f"whyrec ready on {catalog!r} in {time.time() - started:.1f}s")
        return cls(settings, catalog, retriever, ranker, explainer)

    def recommend(
        self, user_id: str, k: int = 10, not_interested: frozenset[str] = frozenset(), overlay: ShopperOverlay | None = None
    ) -> Recommendations:
        """The top k for a shopper: never an item they bought or marked "not interested"."""
        overlay = overlay or ShopperOverlay()
        if not_interested:
            overlay = replace(overlay, not_interested=overlay.not_interested | not_interested)
        return Recommendations(user_id, self.explain_slate(self.rank(user_id, k, overlay)))

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
            slate = diversify(ranked, self.retriever.index, k, self.settings.diversity) if self.settings.diversity > 0 else ranked[:k]
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
        ranking = self._rank_including(user_id, item_id, overlay, self.settings.candidates)
        target = ranking.target
        table = self._fact_tables(user_id, ranking.events, ranking.history, [target])[0]
        with self._stage("explanation"):
            explanation = self.explainer.explain([table], _seconds_left(deadline))[0]
        return self._recommended(target, explanation, table)

    def why_not(self, user_id: str, item_id: str, k: int = 10, overlay: ShopperOverlay | None = None) -> WhyNot:
        """Where an item stands against the k items the shopper would be shown now, and what would
        change that: counterfactuals from the ranker, no generated text."""
        overlay = overlay or ShopperOverlay()
        ranking = self._rank_including(user_id, item_id, overlay, k)
        events, history, target = ranking.events, ranking.history, ranking.target
        # The slate is what recommend() would show: only the items the candidate stage proposed.
        eligible = [r for r in ranking.ranked if r.item_id in ranking.proposed]
        slate = diversify(eligible, self.retriever.index, k, self.settings.diversity) if self.settings.diversity > 0 else eligible[:k]
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
        self.catalog.item(item_id)
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
        exclude = bought | overlay.not_interested | overlay.excluded_history
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

    def _stage(self, name: str):
        return _timed(name, self.stage_timer)

    def _items(self, item_ids: list[str]) -> list[Item]:
        return [self.catalog.items[i] for i in item_ids]

    def _fact_tables(self, user_id: str, events: list[Interaction], history: list[str], ranked: list[RankedItem]) -> list[FactTable]:
        recent_ids = history[-self.settings.history_window :]
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
