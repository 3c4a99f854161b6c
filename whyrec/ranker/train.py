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

That is one objective (`NextItem`) of the one training loop here (`train_listwise`); the other is the
shop's own traffic, engaged items above skipped ones (whyrec.ranker.feedback).
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol

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
class ListGroup:
    """One listwise example: a history and items to order for it, the one that belongs on top first."""
    history: list[str]
    items: list[str]
    features: tuple[tuple[float, ...], ...] = ()  # each item's retrieval features, when known up front


class Objective(Protocol):
    """What the ranker learns from: the groups each epoch trains on, in order, and their features.
    Every objective is the same listwise softmax loss: the first item of a group against the rest."""

    label: str  # names the epochs in the progress bar

    def epoch(self, rng: random.Random) -> list[ListGroup]: ...

    def features(self, groups: list[ListGroup]) -> np.ndarray: ...


class StepConfig(Protocol):
    """The optimisation settings every objective's config has."""

    epochs: int
    groups_per_step: int
    learning_rate: float
    feature_learning_rate: float


@dataclass
class Validation:
    """How the loop judges its epochs: an epoch whose `score` (higher is better) beats the best so
    far is handed to `keep`; more than `patience` epochs in a row that do not end training."""
    score: Callable[[CrossEncoderRanker], float]
    best: float  # what the ranker scored before training
    keep: Callable[[int, float], None]  # (epoch, score): save this epoch's ranker
    patience: int
    seconds: float = 0.0  # what one scoring costs, counted against a deadline


@dataclass
class Fit:
    """What the loop did."""
    losses: list[float] = field(default_factory=list)  # per step, over all epochs
    epochs: list[EpochReport] = field(default_factory=list)  # validated epochs
    best_epoch: int = 0
    best_score: float = 0.0
    stopped_early: bool = False
    stopped_by_deadline: bool = False
    groups_trained: int = 0


class NextItem:
    """A held-out next item that retrieval found, against `negatives` others from the same retrieval
    pool, drawn afresh each epoch from a fresh sample of `per_epoch` of them."""

    label = "epoch"

    def __init__(self, found: list[_Found], negatives: int, per_epoch: int):
        self.found, self.negatives, self.per_epoch = found, negatives, per_epoch

    def epoch(self, rng: random.Random) -> list[ListGroup]:
        groups = []
        for case in rng.sample(self.found, min(len(self.found), self.per_epoch)):
            listed = [case.positive, *rng.sample(case.hard, self.negatives)]
            groups.append(ListGroup(case.history, [c.item_id for c in listed], tuple(c.features for c in listed)))
        return groups

    def features(self, groups: list[ListGroup]) -> np.ndarray:
        return np.array([f for g in groups for f in g.features], dtype=np.float32)


def train_ranker(
    ranker: CrossEncoderRanker,
    catalog: Catalog,
    cases: list[Case],
    source: CandidateSource,
    out_dir: Path,
    config: TrainConfig = TrainConfig(),
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr),
) -> TrainReport:
    """Fine-tune on next items (the objective `NextItem`), early-stopped on held-out cases' NDCG@10
    against the retrieval order; the best epoch's checkpoint is saved to `out_dir`."""
    started = time.time()
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)

    cases = sorted(cases, key=lambda c: c.user_id)
    rng.shuffle(cases)
    holdout = cases[: min(config.holdout_cases, len(cases) // 4)]
    found = _found_cases(cases[len(holdout) :], source, config.hard_pool)
    if not found:
        raise ValueError("no training case has its next item among the retrieval candidates: nothing to train on")
    val_slates = [(case, source.candidates(case.history, config.val_candidates)) for case in holdout]

    baseline = _val_ndcg(None, catalog, val_slates)
    log(f"training on {len(found)} held-out next items that retrieval finds ({min(len(found), config.max_groups_per_epoch)} per epoch), "
        f"validating on {len(val_slates)}; val NDCG@10 of the retrieval order: {baseline:.4f}")

    def keep(epoch: int, ndcg: float) -> None:
        ranker.save(out_dir, {"best_epoch": epoch, "val_ndcg10": ndcg})
        log(f"saved checkpoint to {out_dir}")

    _save_retrieval_order(ranker, out_dir, {"best_epoch": 0, "val_ndcg10": baseline})
    validation = Validation(
        score=lambda r: _val_ndcg(r, catalog, val_slates),
        best=baseline,
        keep=keep,
        patience=config.patience,
        seconds=_validation_seconds(ranker, catalog, val_slates) if config.deadline is not None else 0.0,
    )
    fit = train_listwise(ranker, catalog, NextItem(found, config.negatives, config.max_groups_per_epoch), config, rng, log, validation, config.deadline)
    if fit.best_epoch == 0:
        log("no epoch beat the retrieval order on validation: the saved ranker keeps the retrieval order")
    return TrainReport(
        checkpoint=str(out_dir),
        baseline_val_ndcg10=baseline,
        epochs=fit.epochs,
        best_epoch=fit.best_epoch,
        best_val_ndcg10=fit.best_score,
        seconds=time.time() - started,
        stopped_early=fit.stopped_early,
        stopped_by_deadline=fit.stopped_by_deadline,
        groups_trained=fit.groups_trained,
    )


def train_listwise(
    ranker: CrossEncoderRanker,
    catalog: Catalog,
    objective: Objective,
    config: StepConfig,
    rng: random.Random,
    log: Callable[[str], None],
    validation: Validation | None = None,
    deadline: float | None = None,
) -> Fit:
    """The one training loop: AdamW (the few feature weights with far larger steps than BERT's),
    `groups_per_step` groups a step, the listwise softmax loss. With a `validation`, each epoch is
    scored, kept when better and training stops early; without, the ranker ends as the last step
    left it. A `deadline` (time.time()) cuts an epoch that would overrun it, validation included,
    and training stops after it, so a slow CPU trains on fewer groups instead of running late."""
    optimizer = torch.optim.AdamW(
        [
            {"params": list(ranker.model.parameters())},
            {"params": [ranker.feature_weights], "lr": config.feature_learning_rate, "weight_decay": 0.0},
        ],
        lr=config.learning_rate,
    )
    fit = Fit(best_score=validation.best if validation else 0.0)
    val_seconds = validation.seconds if validation else 0.0
    stale, step_seconds = 0, 0.0  # step_seconds: over all epochs, for the deadline
    for epoch in range(1, config.epochs + 1):
        epoch_start = time.time()
        groups = objective.epoch(rng)
        steps = [groups[i : i + config.groups_per_step] for i in range(0, len(groups), config.groups_per_step)]
        losses = []
        ranker.model.train()
        bar = tqdm(steps, desc=f"{objective.label} {epoch}/{config.epochs}", unit="step", file=sys.stderr, dynamic_ncols=True)
        for step in bar:
            steps_done = len(fit.losses) + len(losses)
            if deadline is not None and steps_done and time.time() + step_seconds / steps_done + val_seconds > deadline:
                fit.stopped_by_deadline = True
                break
            step_start = time.time()
            loss = _listwise_loss(ranker, catalog, step, objective.features(step))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            fit.groups_trained += len(step)
            step_seconds += time.time() - step_start
            bar.set_postfix(loss=f"{mean(losses[-50:]):.3f}")
        bar.close()
        fit.losses += losses
        if not losses:  # the deadline left no room for another epoch
            log(f"stopping before epoch {epoch}: it would not finish within the time budget")
            break
        if fit.stopped_by_deadline:
            log(f"epoch {epoch} cut to {len(losses)} of {len(steps)} steps to finish within the time budget")
        ranker.model.eval()
        if validation is not None:
            validation_start = time.time()
            score = validation.score(ranker)
            val_seconds = time.time() - validation_start
            fit.epochs.append(EpochReport(epoch, mean(losses), score, time.time() - epoch_start))
            weights = ", ".join(f"{n} {w:.2f}" for n, w in zip(ranker.feature_names, ranker.feature_weights.detach().tolist()))
            log(f"epoch {epoch}: train loss {mean(losses):.4f}, val NDCG@10 {score:.4f} (feature weights: {weights})")
            if score > fit.best_score:
                fit.best_epoch, fit.best_score, stale = epoch, score, 0
                validation.keep(epoch, score)
            else:
                stale += 1
                if stale > validation.patience:
                    fit.stopped_early = True
                    log(f"no improvement for {stale} epoch(s): stopping early")
                    break
        if fit.stopped_by_deadline:
            break
    ranker.model.eval()
    return fit


def _listwise_loss(ranker: CrossEncoderRanker, catalog: Catalog, groups: list[ListGroup], features: np.ndarray) -> torch.Tensor:
    """Cross-entropy of each group's first item under a softmax over the group (groups may differ in
    size: a slate skips as many items as it skips), averaged over the groups."""
    queries, docs = [], []
    for group in groups:
        query = history_text([catalog.items[i] for i in group.history[-ranker.history_window :]])
        for item_id in group.items:
            queries.append(query)
            docs.append(candidate_text(catalog.items[item_id]))
    logits = ranker.forward(ranker.encode(queries, docs), features)
    return torch.stack([-torch.log_softmax(part, dim=0)[0] for part in torch.split(logits, [len(g.items) for g in groups])]).mean()


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


@dataclass(frozen=True)
class _Found:
    """A case whose next item is among its retrieval candidates, and the candidates beside it."""
    history: list[str]
    positive: Candidate
    hard: list[Candidate]


def _found_cases(cases: list[Case], source: CandidateSource, pool: int) -> list[_Found]:
    found = []
    for case in tqdm(cases, desc="hard negatives", unit="case", file=sys.stderr, dynamic_ncols=True, leave=False):
        candidates = source.candidates(case.history, pool)
        positive = next((c for c in candidates if c.item_id == case.target), None)
        if positive is not None:
            found.append(_Found(case.history, positive, [c for c in candidates if c.item_id != case.target]))
    return found


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
