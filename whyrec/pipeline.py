"""The one place that wires retrieval, ranker and explainer together."""

from __future__ import annotations

import hashlib
import importlib.resources
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from whyrec import models
from whyrec.catalog import Catalog, Item, fingerprint, strongest_kind
from whyrec.config import Settings
from whyrec.errors import ConfigError
from whyrec.explainer import Explainer, build_fact_table, load_template, make_chat_model
from whyrec.loaders import load_catalog
from whyrec.ranker import CrossEncoderRanker, TrainConfig, TrainReport, train_ranker
from whyrec.retrieval import EmbeddingRetriever, ItemIndex, embed_items, load_encoder
from whyrec.schema import Candidate, RankedItem, RecommendedItem, Recommendations
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


def ranker_folder(settings: Settings, catalog: Catalog) -> Path:
    return cache_folder(settings, catalog) / f"ranker-{_short_hash(models.encoder_path(settings))}"


def build_retriever(settings: Settings, catalog: Catalog, encoder=None, log: Log = stderr_log) -> EmbeddingRetriever:
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
    return EmbeddingRetriever(ItemIndex(item_ids, vectors), history_window=settings.history_window)


def train(settings: Settings, catalog: Catalog, retriever: EmbeddingRetriever, config: TrainConfig = TrainConfig(), log: Log = stderr_log) -> TrainReport:
    """Fine-tune a fresh cross-encoder on the catalog's leave-one-out training part; hard negatives come from retrieval."""
    ranker = CrossEncoderRanker.from_base(models.encoder_path(settings), settings.resolved_device(), history_window=settings.history_window)
    split = leave_one_out(catalog)
    return train_ranker(
        ranker,
        catalog,
        split,
        source=retriever,
        out_dir=ranker_folder(settings, catalog),
        config=config,
        metadata={"data": catalog.name, "data_fingerprint": fingerprint(catalog), "encoder": models.encoder_path(settings)},
        log=log,
    )


def load_ranker(settings: Settings, catalog: Catalog, retriever: EmbeddingRetriever, log: Log = stderr_log) -> CrossEncoderRanker:
    folder = ranker_folder(settings, catalog)
    if not folder.exists():
        if not settings.auto_train:
            raise ConfigError(f"no ranker checkpoint for this data at {folder}; run `whyrec train --data {data_folder(settings)}`")
        log(f"no ranker checkpoint for {catalog.name} yet: training one now (same as `whyrec train`)...")
        train(settings, catalog, retriever, log=log)
    return CrossEncoderRanker.load(folder, settings.resolved_device())


def build_explainer(settings: Settings, log: Log = stderr_log) -> Explainer:
    template = load_template(settings.prompt, settings.prompt_version)
    generator = None if settings.llm_url else models.generator_path(settings, progress=log)
    chat_model, model_name = make_chat_model(settings, generator)
    return Explainer(chat_model, template, model_name, concurrency=settings.llm_concurrency)


@dataclass
class Recommender:
    settings: Settings
    catalog: Catalog
    retriever: EmbeddingRetriever
    ranker: CrossEncoderRanker
    explainer: Explainer

    @classmethod
    def load(cls, settings: Settings, log: Log = stderr_log) -> "Recommender":
        started = time.time()
        catalog = load_data(settings)
        retriever = build_retriever(settings, catalog, log=log)
        ranker = load_ranker(settings, catalog, retriever, log=log)
        explainer = build_explainer(settings, log=log)
        log(f"whyrec ready on {catalog!r} in {time.time() - started:.1f}s")
        return cls(settings, catalog, retriever, ranker, explainer)

    def recommend(self, user_id: str, k: int = 10) -> Recommendations:
        if k < 1:
            raise ValueError("k must be at least 1")
        history = self.catalog.sequence(user_id)
        exclude = self.catalog.purchased(user_id)
        candidates = self.retriever.candidates(history, max(self.settings.candidates, k), exclude)
        ranked = self.ranker.rank(self._items(history), candidates, self.catalog.items, attribute=k, source=self.retriever)[:k]
        return Recommendations(user_id, self._explained(user_id, history, ranked))

    def explain(self, user_id: str, item_id: str) -> RecommendedItem:
        """The explanation for any item, also one outside the shopper's top-k: it is ranked among the candidates."""
        history = self.catalog.sequence(user_id)
        self.catalog.item(item_id)
        candidates = self.retriever.candidates(history, self.settings.candidates, self.catalog.purchased(user_id))
        if item_id not in {c.item_id for c in candidates}:
            candidates.append(Candidate(item_id, self.retriever.score(history, item_id), self.retriever.matched_history(history, item_id)))
        ranked = self.ranker.rank(self._items(history), candidates, self.catalog.items, attribute={item_id}, source=self.retriever)
        target = next(r for r in ranked if r.item_id == item_id)
        return self._explained(user_id, history, [target])[0]

    def _items(self, item_ids: list[str]) -> list[Item]:
        return [self.catalog.items[i] for i in item_ids]

    def _explained(self, user_id: str, history: list[str], ranked: list[RankedItem]) -> list[RecommendedItem]:
        events = self.catalog.events(user_id)
        recent = [(self.catalog.items[i], strongest_kind(events, i)) for i in history[-self.settings.history_window :]]
        tables = [build_fact_table(user_id, self.catalog.items[r.item_id], r, recent) for r in ranked]
        explanations = self.explainer.explain(tables)
        return [RecommendedItem(r.item_id, self.catalog.items[r.item_id].title, r, e) for r, e in zip(ranked, explanations)]
