"""Training everything that learns from the shop's interactions, and loading it for serving (training
first when it is missing and allowed). `whyrec train` ends by writing the manifest every later load
reads (whyrec.pipeline.manifest)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from whyrec.core.catalog import Catalog, fingerprint
from whyrec.core.config import Settings
from whyrec.core.errors import ConfigError, WhyrecError
from whyrec.core.schema import ShownSlate
from whyrec.core.split import leave_one_out
from whyrec.pipeline import models
from whyrec.pipeline.loading import (
    Log,
    build_retriever,
    configured_template,
    embedding_retriever,
    models_folder,
    ranker_folder,
    resolve_adapter,
    retrain_command,
    sequence_folder,
    stderr_log,
    trained_manifest,
    with_window,
)
from whyrec.pipeline.manifest import MANIFEST_FILE, TrainedManifest, check_stage
from whyrec.ranker import FEATURE_SCALE, CrossEncoderRanker, FeedbackConfig, FeedbackReport, TrainConfig, TrainReport, engaged_above_skipped, train_on_feedback, train_ranker
from whyrec.retrieval import CooccurrenceRetriever, EmbeddingRetriever, FusedRetriever, FusionWeights, SequenceConfig, refit_sequence_model, train_sequence_model, tune_weights


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
    serving time too), and the last item stays unseen so the offline evaluation is untouched.

    The manifest of the models it replaces goes first and the new one is written last, so a run
    that fails leaves a folder that loading refuses (naming `whyrec train`) rather than one whose
    manifest describes other models."""
    started = time.time()
    window = settings.history_window
    template = configured_template(settings)  # before hours of training: a bad prompt setting fails now
    adapter = resolve_adapter(settings, template)
    folder = models_folder(settings, catalog)
    (folder / MANIFEST_FILE).unlink(missing_ok=True)
    # Every stage trains with the configured window, whatever the passed embedding was built with.
    embedding = with_window(embedding, window)
    split = leave_one_out(catalog)
    train_sequences = list(split.train.values())
    valid = [(c.history, c.target) for c in split.valid]
    log(f"1/4 sequence model on {len(train_sequences)} shoppers' sequences")
    sequence, sequence_report = train_sequence_model(
        embedding.index.item_ids, train_sequences, valid, embedding.index.vectors, sequence_config, log=log
    )
    retriever = FusedRetriever(embedding, CooccurrenceRetriever(train_sequences, history_window=window), sequence)
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
    served.save(sequence_folder(settings, catalog), {"report": sequence_report})

    log("4/4 cross-encoder ranker")
    ranker = CrossEncoderRanker.from_base(
        models.encoder_path(settings),
        settings.resolved_device(settings.ranker_device),
        history_window=window,
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
        log=log,
    )
    TrainedManifest(
        history_window=window,
        feature_names=FusedRetriever.feature_names,
        fusion_weights=asdict(weights),
        encoder=models.encoder_path(settings),
        data=catalog.name,
        data_fingerprint=fingerprint(catalog),
        template=template.label,
        adapter=str(adapter) if adapter else None,
        trained_at=datetime.now(UTC),
    ).write(folder)
    return TrainSummary(sequence_report, asdict(weights), recall, report, time.time() - started)


@dataclass(frozen=True)
class TrainedModels:
    manifest: TrainedManifest
    retriever: FusedRetriever
    ranker: CrossEncoderRanker


def load_trained(settings: Settings, catalog: Catalog, log: Log = stderr_log, trainable: bool = False) -> TrainedModels:
    """The manifest, the candidate stage and the ranker for this data, read once and agreeing; trains
    them first when nothing is trained and that is allowed. The ranker is set up for serving
    (`WHYREC_RANKER_PRECISION`) unless it is to be `trainable`."""
    folder, retrain = models_folder(settings, catalog), retrain_command(settings)
    embedding = None
    # Anything trained without a manifest (an older whyrec, or a run that failed) is an error, not a
    # silent retrain: `whyrec train` rebuilds it on purpose. So is a damaged file, below.
    if not any(p.exists() for p in (folder / MANIFEST_FILE, ranker_folder(settings, catalog), sequence_folder(settings, catalog))):
        if not settings.auto_train:
            raise ConfigError(f"no trained models for this data at {folder}; run `{retrain}`")
        log(f"no trained models for {catalog.name} yet: training them now (same as `whyrec train`)...")
        embedding = embedding_retriever(settings, catalog, log=log)
        train(settings, catalog, embedding, log=log)
    manifest = trained_manifest(settings, catalog)
    embedding = embedding or embedding_retriever(settings, catalog, log=log)
    try:
        ranker = CrossEncoderRanker.load(ranker_folder(settings, catalog), settings.resolved_device(settings.ranker_device))
        check_stage(manifest, "ranker", ranker.history_window, ranker.feature_names, folder, retrain)
        retriever = build_retriever(settings, catalog, embedding, manifest=manifest)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("`whyrec train --data DIR`", f"`{retrain}`")) from None
    return TrainedModels(manifest, retriever, ranker if trainable else ranker.for_serving(settings.ranker_precision))


def load_models(settings: Settings, catalog: Catalog, log: Log = stderr_log, trainable: bool = False) -> tuple[FusedRetriever, CrossEncoderRanker]:
    """`load_trained` without the manifest: the candidate stage and the ranker."""
    trained = load_trained(settings, catalog, log, trainable)
    return trained.retriever, trained.ranker


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
    trained = load_trained(settings, catalog, log=log, trainable=True)
    retriever, ranker = trained.retriever, trained.ranker
    folder = ranker_folder(settings, catalog)
    before = engaged_above_skipped(ranker, catalog, held_out, retriever)
    try:
        report = train_on_feedback(ranker, catalog, train_slates, retriever, None, config, log=log)
    except ValueError as exc:
        raise WhyrecError(str(exc)) from None
    after = engaged_above_skipped(ranker, catalog, held_out, retriever)
    kept = after >= before
    if kept:
        ranker.save(folder, {"feedback_slates": report.slates, "feedback_groups": report.groups})
        trained.manifest.model_copy(update={"feedback_rounds": trained.manifest.feedback_rounds + 1}).write(models_folder(settings, catalog))
    report.checkpoint = str(folder)
    outcome = "the serving ranker is updated" if kept else "worse, so the serving ranker is left as it was"
    log(f"engaged above skipped on {len(held_out)} held-out slates: {before:.3f} -> {after:.3f}; {outcome}")
    return FeedbackSummary(len(slates), len(slates) - len(known), len(held_out), before, after, kept, report)


