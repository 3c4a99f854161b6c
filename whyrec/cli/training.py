"""Commands that train on the shop's data: the models, and the ranker on shoppers' feedback."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Optional

import typer

from whyrec.cli.app import DataOption, JsonOption, _settings, app


@app.command()
def train(
    data: Optional[Path] = DataOption,
    epochs: int = typer.Option(2, min=1, help="Most ranker epochs; training stops early when validation NDCG@10 stops improving."),
    negatives: int = typer.Option(7, min=1, help="Hard negatives per positive in the ranker's listwise loss, from the retrieval candidates."),
    groups_per_epoch: int = typer.Option(1000, min=1, help="Training groups (one held-out next item each) sampled per ranker epoch."),
    budget_minutes: float = typer.Option(
        14.0, "--budget-minutes", min=0.0,
        help="Wall-clock budget for the whole command: ranker epochs that would overrun it are cut short or skipped (the report says so). 0 = no budget.",
    ),
    as_json: bool = JsonOption,
):
    """Train on the data's interactions: the sequence model, the retrieval fusion weights, then the BERT ranker.

    The best checkpoints are saved in the cache and reused by every other command."""
    started = time.time()
    from whyrec.pipeline import embedding_retriever, load_data
    from whyrec.pipeline import train as run_training
    from whyrec.ranker import TrainConfig

    settings = _settings(data)
    catalog = load_data(settings)
    deadline = started + budget_minutes * 60 if budget_minutes > 0 else None
    config = TrainConfig(epochs=epochs, negatives=negatives, max_groups_per_epoch=groups_per_epoch, deadline=deadline)
    summary = run_training(settings, catalog, embedding_retriever(settings, catalog), config)
    if as_json:
        print(json.dumps(summary.to_dict(), indent=2))
        return
    report = summary.ranker
    print(f"trained in {summary.seconds:.0f}s. sequence model: val NDCG@10 {summary.sequence_model['valid_ndcg@10']:.4f}; "
          f"candidates: val recall@50 {summary.candidate_recall50_valid:.4f}; ranker: best epoch {report.best_epoch}, "
          f"val NDCG@10 {report.best_val_ndcg10:.4f} (retrieval order: {report.baseline_val_ndcg10:.4f}); checkpoint: {report.checkpoint}"
          + (f"; the time budget cut the ranker's training at {report.groups_trained} groups" if report.stopped_by_deadline else ""))


@app.command("train-feedback")
def train_feedback(
    data: Optional[Path] = DataOption,
    database_url: Optional[str] = typer.Option(None, "--database-url", help="The impression log to learn from (SQLAlchemy URL). Default: $WHYREC_DATABASE_URL, else the local SQLite store."),
    since: Optional[datetime] = typer.Option(None, help="Only slates served at or after this time (ISO date or date-time, UTC)."),
    window_hours: float = typer.Option(24.0, "--window-hours", min=0.0, help="An item counts as engaged if the shopper clicked, carted or bought it within this many hours of seeing it; younger slates wait."),
    epochs: int = typer.Option(1, min=1, help="Passes over the engaged items."),
    learning_rate: float = typer.Option(3e-5, "--learning-rate", min=0.0, help="AdamW learning rate of the cross-encoder."),
    as_json: bool = JsonOption,
):
    """Fine-tune the ranker on the shop's own traffic: items clicked or bought against items shown beside them and skipped.

    A fifth of the shoppers' slates are held out; the new ranker replaces the serving one only if it
    orders their engaged items above skipped ones at least as often. Restart servers to pick it up."""
    from datetime import timedelta

    from whyrec.pipeline import load_data, train_from_feedback
    from whyrec.ranker import FeedbackConfig
    from whyrec.service.store import Store

    settings = _settings(data, database_url=database_url)
    catalog = load_data(settings)
    slates = Store(settings.resolved_database_url()).shown_slates(since=since, window=timedelta(hours=window_hours))
    summary = train_from_feedback(settings, catalog, slates, FeedbackConfig(epochs=epochs, learning_rate=learning_rate))
    if as_json:
        print(json.dumps(summary.to_dict(), indent=2))
        return
    print(f"{summary.report.groups} engaged items from {summary.report.slates} slates; engaged above skipped on "
          f"{summary.held_out} held-out slates {summary.engaged_above_skipped_before:.3f} -> {summary.engaged_above_skipped_after:.3f}; "
          f"{'ranker updated' if summary.kept else 'ranker left as it was'}: {summary.report.checkpoint}")


