"""Fine-tune the cross-encoder on a shop's interactions with a listwise softmax loss.

The ranker only ever reorders retrieval's candidates, so it is trained on that task: a training
group is a held-out next item (the positive) that is among the retrieval candidates for the
history before it, against negatives drawn from the same candidates, scored together and trained
with cross-entropy over the group. Training on positives that retrieval missed would teach it that
a high retrieval score means "wrong", which is false on the candidates it is actually shown.

The cases must be next items the collaborative retrieval sources never saw (the validation items,
with the sources fit on the training part): on items they were fit on, their scores are
overconfident and the ranker would learn to trust them too much. A slice of the cases is held out;
training stops early when its NDCG@10 stops improving, and only the best epoch's checkpoint is kept.
The retrieval order itself competes as "epoch 0": on a shop where no trained epoch beats it on the
held-out cases, the saved ranker scores by the retrieval features alone (its text head zeroed), so
serving never ranks worse than retrieval on validation, and attributions still come from re-scoring.
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from whyrec.core.catalog import Catalog
from whyrec.core.metrics import mean, ndcg_at
from whyrec.core.schema import Candidate, CandidateSource
from whyrec.core.split import Case
from whyrec.ranker.model import CrossEncoderRanker, candidate_text, history_text


@dataclass
class TrainConfig:
    epochs: int = 2
    negatives: int = 7  # per positive, from the same retrieval candidates
    groups_per_step: int = 4
    learning_rate: float = 5e-5
    feature_learning_rate: float = 0.02  # the few feature weights need far larger steps than BERT's
    max_groups_per_epoch: int = 1000  # a fresh random sample each epoch
    holdout_cases: int = 300  # cases kept out of training for early stopping
    val_candidates: int = 20  # the depth the ranker re-scores, as in serving and evaluation
    hard_pool: int = 50  # retrieval depth a positive must reach and the negatives come from
    patience: int = 0
    seed: int = 0
    # Wall-clock time (time.time()) by which training must be done, validation included, or None.
    # An epoch that would overrun it is cut short (or not started) and training stops after it, so a
    # slow CPU trains on fewer groups instead of running past its budget.
    deadline: float | None = None


@dataclass
class EpochReport:
    epoch: int
    train_loss: float
    val_ndcg10: float
    seconds: float


@dataclass
class TrainReport:
    checkpoint: str
    baseline_val_ndcg10: float  # the retrieval order, before the ranker
    epochs: list[EpochReport] = field(default_factory=list)
    best_epoch: int = 0
    best_val_ndcg10: float = 0.0
    seconds: float = 0.0
    stopped_early: bool = False
    stopped_by_deadline: bool = False
    groups_trained: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Group:
    history: list[str]
    positive: Candidate
    hard: list[Candidate]


def train_ranker(
    ranker: CrossEncoderRanker,
    catalog: Catalog,
    cases: list[Case],
    source: CandidateSource,
    out_dir: Path,
    config: TrainConfig = TrainConfig(),
    metadata: dict | None = None,
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr),
) -> TrainReport:
    started = time.time()
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)

    cases = sorted(cases, key=lambda c: c.user_id)
    rng.shuffle(cases)
    holdout = cases[: min(config.holdout_cases, len(cases) // 4)]
    groups = _training_groups(cases[len(holdout) :], source, config.hard_pool)
    if not groups:
        raise ValueError("no training case has its next item among the retrieval candidates: nothing to train on")
    val_slates = [(case, source.candidates(case.history, config.val_candidates)) for case in holdout]

    baseline = _val_ndcg(None, catalog, val_slates)
    report = TrainReport(checkpoint=str(out_dir), baseline_val_ndcg10=baseline)
    log(f"training on {len(groups)} held-out next items that retrieval finds ({min(len(groups), config.max_groups_per_epoch)} per epoch), "
        f"validating on {len(val_slates)}; val NDCG@10 of the retrieval order: {baseline:.4f}")

    optimizer = torch.optim.AdamW(
        [
            {"params": list(ranker.model.parameters())},
            {"params": [ranker.feature_weights], "lr": config.feature_learning_rate, "weight_decay": 0.0},
        ],
        lr=config.learning_rate,
    )
    _save_retrieval_order(ranker, out_dir, {"best_epoch": 0, "val_ndcg10": baseline, **(metadata or {})})
    report.best_epoch, report.best_val_ndcg10 = 0, baseline
    best, stale = baseline, 0
    val_seconds = _validation_seconds(ranker, catalog, val_slates) if config.deadline is not None else 0.0
    step_seconds, steps_done = 0.0, 0  # over all epochs, for the deadline
    for epoch in range(1, config.epochs + 1):
        epoch_start = time.time()
        sample = rng.sample(groups, min(len(groups), config.max_groups_per_epoch))
        steps = [sample[i : i + config.groups_per_step] for i in range(0, len(sample), config.groups_per_step)]
        losses = []
        ranker.model.train()
        bar = tqdm(steps, desc=f"epoch {epoch}/{config.epochs}", unit="step", file=sys.stderr, dynamic_ncols=True)
        for step in bar:
            if config.deadline is not None and steps_done:
                if time.time() + step_seconds / steps_done + val_seconds > config.deadline:
                    report.stopped_by_deadline = True
                    break
            step_start = time.time()
            queries, docs, features = [], [], []
            for group in step:
                query = history_text([catalog.items[i] for i in group.history[-ranker.history_window :]])
                for candidate in [group.positive, *rng.sample(group.hard, config.negatives)]:
                    queries.append(query)
                    docs.append(candidate_text(catalog.items[candidate.item_id]))
                    features.append(candidate.features)
            logits = ranker.forward(ranker.encode(queries, docs), np.array(features, dtype=np.float32)).view(len(step), config.negatives + 1)
            # The positive sits at column 0 of every group.
            loss = torch.nn.functional.cross_entropy(logits, torch.zeros(len(step), dtype=torch.long, device=logits.device))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            report.groups_trained += len(step)
            step_seconds, steps_done = step_seconds + time.time() - step_start, steps_done + 1
            bar.set_postfix(loss=f"{mean(losses[-50:]):.3f}")
        bar.close()
        if not losses:  # the deadline left no room for another epoch
            log(f"stopping before epoch {epoch}: it would not finish within the time budget")
            break
        if report.stopped_by_deadline:
            log(f"epoch {epoch} cut to {len(losses)} of {len(steps)} steps to finish within the time budget")
        ranker.model.eval()
        validation_start = time.time()
        ndcg = _val_ndcg(ranker, catalog, val_slates)
        val_seconds = time.time() - validation_start
        report.epochs.append(EpochReport(epoch, mean(losses), ndcg, time.time() - epoch_start))
        weights = ", ".join(f"{n} {w:.2f}" for n, w in zip(ranker.feature_names, ranker.feature_weights.detach().tolist()))
        log(f"epoch {epoch}: train loss {mean(losses):.4f}, val NDCG@10 {ndcg:.4f} (feature weights: {weights})")
        if ndcg > best:
            best, stale = ndcg, 0
            report.best_epoch, report.best_val_ndcg10 = epoch, ndcg
            ranker.save(out_dir, {"best_epoch": epoch, "val_ndcg10": ndcg, **(metadata or {})})
            log(f"saved checkpoint to {out_dir}")
        else:
            stale += 1
            if stale > config.patience:
                report.stopped_early = True
                log(f"no improvement for {stale} epoch(s): stopping early")
                break
        if report.stopped_by_deadline:
            break
    if report.best_epoch == 0:
        log("no epoch beat the retrieval order on validation: the saved ranker keeps the retrieval order")
    report.seconds = time.time() - started
    return report


def _validation_seconds(ranker: CrossEncoderRanker, catalog: Catalog, slates: list[tuple[Case, list[Candidate]]], probe: int = 8) -> float:
    """What one validation pass will cost, from timing it on a few of the slates it scores."""
    scored = [(case, candidates) for case, candidates in slates if case.target in {c.item_id for c in candidates}]
    started = time.time()
    _val_ndcg(ranker, catalog, scored[:probe])
    return (time.time() - started) * len(scored) / max(1, min(probe, len(scored)))


def _save_retrieval_order(ranker: CrossEncoderRanker, out_dir: Path, metadata: dict) -> None:
    """Save the ranker with its text head zeroed: its score is then the weighted retrieval features,
    which order candidates as the fused retrieval score does."""
    head = ranker.model.classifier
    saved = {name: value.detach().clone() for name, value in head.state_dict().items()}
    with torch.no_grad():
        for value in head.parameters():
            value.zero_()
    try:
        ranker.save(out_dir, metadata)
    finally:
        head.load_state_dict(saved)


def _training_groups(cases: list[Case], source: CandidateSource, pool: int) -> list[_Group]:
    groups = []
    for case in tqdm(cases, desc="hard negatives", unit="case", file=sys.stderr, dynamic_ncols=True, leave=False):
        found = source.candidates(case.history, pool)
        positive = next((c for c in found if c.item_id == case.target), None)
        if positive is not None:
            groups.append(_Group(case.history, positive, [c for c in found if c.item_id != case.target]))
    return groups


def _val_ndcg(ranker: CrossEncoderRanker | None, catalog: Catalog, slates: list[tuple[Case, list[Candidate]]]) -> float:
    """NDCG@10 of the held-out item within its retrieval slate (0 when retrieval missed it)."""
    values = []
    for case, candidates in slates:
        ids = [c.item_id for c in candidates]
        if case.target not in ids:
            values.append(0.0)
            continue
        if ranker is not None:
            features = np.array([c.features for c in candidates], dtype=np.float32)
            scores = ranker.score([catalog.items[i] for i in case.history], [catalog.items[i] for i in ids], features)
            ids = [ids[i] for i in np.argsort(-scores, kind="stable")]
        values.append(ndcg_at(ids.index(case.target) + 1, 10))
    return mean(values)
