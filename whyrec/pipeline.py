"""The one place that wires retrieval, ranker and explainer together."""

from __future__ import annotations

import hashlib
import importlib.resources
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from whyrec import models
from whyrec.catalog import Catalog, Item, fingerprint, strongest_kind
from whyrec.config import Settings
from whyrec.errors import ConfigError
from whyrec.explainer import Explainer, build_fact_table, load_template, make_chat_model
from whyrec.explainer.cache import ExplanationCache
from whyrec.explainer.templates import PromptTemplateSpec
from whyrec.loaders import load_catalog
from whyrec.ranker import CrossEncoderRanker, TrainConfig, TrainReport, diversify, train_ranker
from whyrec.ranker.model import FEATURE_SCALE
from whyrec.retrieval import EmbeddingRetriever, ItemIndex, embed_items, load_encoder
from whyrec.retrieval.cooccurrence import CooccurrenceRetriever
from whyrec.retrieval.fusion import FusedRetriever, FusionWeights, tune_weights
from whyrec.retrieval.sequential import SequenceConfig, SequenceRetriever, refit_sequence_model, train_sequence_model
from whyrec.schema import FactTable, RankedItem, RecommendedItem, Recommendations
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
    vectors = embed_items(encoder, [catalog.items[i] for i in item_ids], cache_file)
    index = ItemIndex(item_ids, vectors, kind=settings.index_kind, device=settings.resolved_device())
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
        settings.resolved_device(),
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
    whole sequence); the sequence model and the fusion weights come from `whyrec train`."""
    folder = sequence_folder(settings, catalog)
    if not folder.exists():
        raise ConfigError(f"no sequence model for this data at {folder}; run `whyrec train --data {data_folder(settings)}`")
    sequence = SequenceRetriever.load(folder, embedding.index.vectors)
    if sequences is None:
        sequences = [catalog.sequence(u) for u in catalog.users]
    cooccurrence = CooccurrenceRetriever(sequences, history_window=settings.history_window)
    return FusedRetriever(embedding, cooccurrence, sequence, FusionWeights(**sequence.metadata["fusion_weights"]))


def load_models(settings: Settings, catalog: Catalog, log: Log = stderr_log) -> tuple[FusedRetriever, CrossEncoderRanker]:
    """The candidate stage and the ranker for this data; trains them first when allowed and missing."""
    embedding = embedding_retriever(settings, catalog, log=log)
    if not (ranker_folder(settings, catalog).exists() and sequence_folder(settings, catalog).exists()):
        if not settings.auto_train:
            raise ConfigError(f"no trained models for this data at {models_folder(settings, catalog)}; run `whyrec train --data {data_folder(settings)}`")
        log(f"no trained models for {catalog.name} yet: training them now (same as `whyrec train`)...")
        train(settings, catalog, embedding, log=log)
    return build_retriever(settings, catalog, embedding), CrossEncoderRanker.load(ranker_folder(settings, catalog), settings.resolved_device())


def default_adapter_folder(settings: Settings, template: PromptTemplateSpec) -> Path:
    """Where `whyrec explainer tune` saves the adapter for this generator and template by default."""
    return settings.cache_dir / "adapters" / settings.generator.replace("/", "--") / f"lora-{template.label}"


def build_explainer(settings: Settings, log: Log = stderr_log) -> Explainer:
    """The configured explainer. Unless WHYREC_ADAPTER says otherwise, a LoRA adapter that
    `whyrec explainer tune` saved for this generator and template is loaded."""
    template = load_template(settings.prompt, settings.prompt_version)
    if settings.adapter is None and not settings.llm_url and "adapter" not in settings.model_fields_set:
        tuned = default_adapter_folder(settings, template)
        if (tuned / "adapter_config.json").exists():
            settings = settings.model_copy(update={"adapter": tuned})
    generator = None if settings.llm_url else models.generator_path(settings, progress=log)
    chat_model, model_name = make_chat_model(settings, generator)
    cache = ExplanationCache(settings.explanation_cache_size)
    return Explainer(chat_model, template, model_name, concurrency=settings.llm_concurrency, cache=cache)


@dataclass
class Recommender:
    settings: Settings
    catalog: Catalog
    retriever: FusedRetriever
    ranker: CrossEncoderRanker
    explainer: Explainer

    @classmethod
    def load(cls, settings: Settings, log: Log = stderr_log) -> "Recommender":
        started = time.time()
        catalog = load_data(settings)
        retriever, ranker = load_models(settings, catalog, log=log)
        explainer = build_explainer(settings, log=log)
        log(f"whyrec ready on {catalog!r} in {time.time() - started:.1f}s")
        return cls(settings, catalog, retriever, ranker, explainer)

    def recommend(self, user_id: str, k: int = 10, not_interested: frozenset[str] = frozenset()) -> Recommendations:
        """The top k for a shopper: never an item they bought or marked "not interested"."""
        slate, tables = self.slate_fact_tables(user_id, k, not_interested)
        return Recommendations(user_id, self._explained(slate, tables))

    def slate_fact_tables(self, user_id: str, k: int = 10, not_interested: frozenset[str] = frozenset()) -> tuple[list[RankedItem], list[FactTable]]:
        """The ranked, attributed top k and their fact tables, before any text is generated."""
        if k < 1:
            raise ValueError("k must be at least 1")
        history = self.catalog.sequence(user_id)
        exclude = self.catalog.purchased(user_id) | set(not_interested)
        candidates = self.retriever.candidates(history, max(self.settings.candidates, k), exclude)
        ranked = self.ranker.rank(self._items(history), candidates, self.catalog.items)
        slate = diversify(ranked, self.retriever.index, k, self.settings.diversity) if self.settings.diversity > 0 else ranked[:k]
        attributed = self.ranker.with_attributions(self._items(history), ranked, {r.item_id for r in slate}, self.catalog.items, self.retriever)
        by_id = {r.item_id: r for r in attributed}
        slate = [by_id[r.item_id] for r in slate]
        return slate, self._fact_tables(user_id, history, slate)

    def explain(self, user_id: str, item_id: str) -> RecommendedItem:
        """The explanation for any item, also one outside the shopper's top-k: it is ranked among the candidates."""
        history = self.catalog.sequence(user_id)
        self.catalog.item(item_id)
        candidates = self.retriever.candidates(history, self.settings.candidates, self.catalog.purchased(user_id))
        if item_id not in {c.item_id for c in candidates}:
            candidates.append(self.retriever.candidate(history, item_id))
        ranked = self.ranker.rank(self._items(history), candidates, self.catalog.items, attribute={item_id}, source=self.retriever)
        target = next(r for r in ranked if r.item_id == item_id)
        return self._explained([target], self._fact_tables(user_id, history, [target]))[0]

    def _items(self, item_ids: list[str]) -> list[Item]:
        return [self.catalog.items[i] for i in item_ids]

    def _fact_tables(self, user_id: str, history: list[str], ranked: list[RankedItem]) -> list[FactTable]:
        events = self.catalog.events(user_id)
        recent = [(self.catalog.items[i], strongest_kind(events, i)) for i in history[-self.settings.history_window :]]
        return [build_fact_table(user_id, self.catalog.items[r.item_id], r, recent) for r in ranked]

    def _explained(self, ranked: list[RankedItem], tables: list[FactTable]) -> list[RecommendedItem]:
        explanations = self.explainer.explain(tables)
        return [RecommendedItem(r.item_id, self.catalog.items[r.item_id].title, r, e) for r, e in zip(ranked, explanations)]
