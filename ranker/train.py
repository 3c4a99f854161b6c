"""Fine-tune the cross-encoder on a shop's interactions with a listwise softmax loss.

The ranker only ever reorders retrieval's candidates, so it is trained on that task: a training
group is a point in a shopper's sequence where the next item (the positive) is among the retrieval
candidates for the history before it, against negatives drawn from the same candidates (plus one
random item), scored together and trained with cross-entropy over the group. Training on positives
that retrieval missed would teach it that a high retrieval score means "wrong", which is false on
the candidates it is actually shown. Validation reranks the retrieval candidates of held-out
shoppers and reports NDCG@10; training stops early when it stops improving, and only the best
epoch's checkpoint is kept.
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

from whyrec.catalog import Catalog
from whyrec.metrics import mean, ndcg_at
from whyrec.ranker.model import CrossEncoderRanker, candidate_text, history_text
from whyrec.schema import Candidate, CandidateSource
from whyrec.split import Case, Split


@dataclass
class TrainConfig:
    epochs: int = 3
    negatives: int = 7  # per positive: all but one from the same retrieval candidates, one random
    groups_per_step: int = 4
    learning_rate: float = 5e-5
    max_groups_per_epoch: int = 1200  # a fresh random sample of shoppers each epoch
    val_cases: int = 150
    val_candidates: int = 30
    hard_pool: int = 50  # retrieval depth a positive must reach and the hard negatives come from
    max_prefixes_per_user: int = 10  # most recent sequence positions per shopper turned into groups
    patience: int = 1
    seed: int = 0


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

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Group:
    history: list[str]
    positive: str
    hard: list[str]


def train_ranker(
    ranker: CrossEncoderRanker,
    catalog: Catalog,
    split: Split,
    source: CandidateSource,
    out_dir: Path,
    config: TrainConfig = TrainConfig(),
    metadata: dict | None = None,
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr),
) -> TrainReport:
    started = time.time()
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)

    groups = _training_groups(split, source, config.hard_pool, config.max_prefixes_per_user)
    if not groups:
        raise ValueError("no training position has its next item among the retrieval candidates: nothing to train on")
    val_cases = sorted(split.valid, key=lambda c: c.user_id)
    rng.shuffle(val_cases)
    val_cases = val_cases[: config.val_cases]
    val_slates = [(case, source.candidates(case.history, config.val_candidates)) for case in val_cases]

    baseline = _val_ndcg(None, catalog, val_slates)
    report = TrainReport(checkpoint=str(out_dir), baseline_val_ndcg10=baseline)
    log(f"training on {len(groups)} sequence positions whose next item retrieval finds ({min(len(groups), config.max_groups_per_epoch)} per epoch), "
        f"validating on {len(val_slates)}; val NDCG@10 of the retrieval order: {baseline:.4f}")

    # The retrieval weight is one scalar around 20: it needs a far larger step than BERT's weights.
    optimizer = torch.optim.AdamW(
        [{"params": list(ranker.model.parameters())}, {"params": [ranker.retrieval_weight], "lr": 0.05, "weight_decay": 0.0}],
        lr=config.learning_rate,
    )
    all_items = list(catalog.items)
    best, stale = -1.0, 0
    for epoch in range(1, config.epochs + 1):
        epoch_start = time.time()
        sample = rng.sample(groups, min(len(groups), config.max_groups_per_epoch))
        steps = [sample[i : i + config.groups_per_step] for i in range(0, len(sample), config.groups_per_step)]
        losses = []
        ranker.model.train()
        bar = tqdm(steps, desc=f"epoch {epoch}/{config.epochs}", unit="step", file=sys.stderr, dynamic_ncols=True)
        for step in bar:
            queries, docs, retrieval = [], [], []
            for group in step:
                negatives = _negatives(group, config.negatives, all_items, rng)
                query = history_text([catalog.items[i] for i in group.history[-ranker.history_window :]])
                for item_id in [group.positive, *negatives]:
                    queries.append(query)
                    docs.append(candidate_text(catalog.items[item_id]))
                    retrieval.append(source.score(group.history, item_id))
            logits = ranker.forward(ranker.encode(queries, docs), retrieval).view(len(step), config.negatives + 1)
            # The positive sits at column 0 of every group.
            loss = torch.nn.functional.cross_entropy(logits, torch.zeros(len(step), dtype=torch.long, device=logits.device))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{mean(losses[-50:]):.3f}")
        bar.close()
        ranker.model.eval()
        ndcg = _val_ndcg(ranker, catalog, val_slates)
        report.epochs.append(EpochReport(epoch, mean(losses), ndcg, time.time() - epoch_start))
        log(f"epoch {epoch}: train loss {mean(losses):.4f}, val NDCG@10 {ndcg:.4f}")
        if ndcg > best:
            best, stale = ndcg, 0
            report.best_epoch, report.best_val_ndcg10 = epoch, ndcg
            ranker.save(out_dir, {"best_epoch": epoch, "val_ndcg10": ndcg, **(metadata or {})})
            log(f"saved checkpoint to {out_dir}")
        else:
            stale += 1
            if stale > config.patience:
                report.stopped_early = True
                log(f"no improvement for {stale} epochs: stopping early")
                break
    report.seconds = time.time() - started
    return report


def _training_groups(split: Split, source: CandidateSource, pool: int, max_prefixes: int) -> list[_Group]:
    groups = []
    for user in sorted(split.train):
        sequence = split.train[user]
        for t in range(max(1, len(sequence) - max_prefixes), len(sequence)):
            history, positive = sequence[:t], sequence[t]
            hard = [c.item_id for c in source.candidates(history, pool) if c.item_id != positive]
            if len(hard) < pool:  # the positive was among the candidates
                groups.append(_Group(history, positive, hard))
    return groups


def _negatives(group: _Group, count: int, all_items: list[str], rng: random.Random) -> list[str]:
    chosen = rng.sample(group.hard, min(len(group.hard), count - 1))
    taken = set(chosen) | set(group.history) | {group.positive}
    while len(chosen) < count:
        item_id = rng.choice(all_items)
        if item_id not in taken:
            chosen.append(item_id)
            taken.add(item_id)
    return chosen


def _val_ndcg(ranker: CrossEncoderRanker | None, catalog: Catalog, slates: list[tuple[Case, list[Candidate]]]) -> float:
    """NDCG@10 of the held-out item within its retrieval slate (0 when retrieval missed it)."""
    values = []
    for case, candidates in slates:
        ids = [c.item_id for c in candidates]
        if case.target not in ids:
            values.append(0.0)
            continue
        if ranker is not None:
            scores = ranker.score([catalog.items[i] for i in case.history], [catalog.items[i] for i in ids], [c.score for c in candidates])
            ids = [ids[i] for i in np.argsort(-scores, kind="stable")]
        values.append(ndcg_at(ids.index(case.target) + 1, 10))
    return mean(values)
