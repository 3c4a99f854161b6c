"""Learn from the shop's own traffic: within each served slate, the items the shopper engaged with
(clicked, carted, bought) against the items shown beside them and skipped.

A slate says nothing about items it did not show, so each engaged item is one listwise group
against that slate's skipped items only: an objective of the offline trainer's loop and loss
(whyrec.ranker.train), on impressions instead of held-out purchases. The ranker keeps its
checkpoint's other settings and is saved back atomically.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from whyrec.core.catalog import Catalog
from whyrec.core.metrics import mean
from whyrec.core.schema import CandidateSource, ShownSlate
from whyrec.ranker.model import CrossEncoderRanker
from whyrec.ranker.train import ListGroup, train_listwise


@dataclass(frozen=True)
class FeedbackConfig:
    epochs: int = 1
    negatives: int = 7  # skipped items per engaged item, at most
    groups_per_step: int = 4
    learning_rate: float = 3e-5
    feature_learning_rate: float = 0.01
    seed: int = 0


@dataclass
class FeedbackReport:
    slates: int
    groups: int  # (engaged item, skipped items) groups trained on
    train_loss: float
    seconds: float
    checkpoint: str

    def to_dict(self) -> dict:
        return asdict(self)


def feedback_groups(slates: list[ShownSlate], negatives: int, rng: random.Random) -> list[ListGroup]:
    """Each engaged item first, then up to `negatives` of the items its slate showed and the shopper skipped."""
    groups = []
    for slate in slates:
        skipped = [i for i in slate.shown if i not in slate.engaged]
        if not skipped:
            continue
        for item_id in slate.shown:
            if item_id in slate.engaged:
                groups.append(ListGroup(list(slate.history), [item_id, *rng.sample(skipped, min(negatives, len(skipped)))]))
    return groups


class EngagedOverSkipped:
    """The objective: the same groups every epoch, reshuffled, their retrieval features recomputed
    from each slate's history."""

    label = "feedback epoch"

    def __init__(self, groups: list[ListGroup], source: CandidateSource):
        self.groups, self.source = groups, source

    def epoch(self, rng: random.Random) -> list[ListGroup]:
        rng.shuffle(self.groups)
        return self.groups

    def features(self, groups: list[ListGroup]) -> np.ndarray:
        return self.source.features([g.history for g in groups for _ in g.items], [i for g in groups for i in g.items])


def engaged_above_skipped(ranker: CrossEncoderRanker, catalog: Catalog, slates: list[ShownSlate], source: CandidateSource) -> float:
    """Fraction of (engaged, skipped) pairs within a slate that the ranker orders engaged-first."""
    wins = []
    for slate in slates:
        shown = list(slate.shown)
        features = source.features([list(slate.history)] * len(shown), shown)
        scores = dict(zip(shown, ranker.score([catalog.items[i] for i in slate.history], [catalog.items[i] for i in shown], features)))
        wins += [float(scores[e] > scores[s]) for e in slate.engaged for s in shown if s not in slate.engaged]
    return mean(wins)


def train_on_feedback(
    ranker: CrossEncoderRanker,
    catalog: Catalog,
    slates: list[ShownSlate],
    source: CandidateSource,
    out_dir: Path | None,
    config: FeedbackConfig = FeedbackConfig(),
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
) -> FeedbackReport:
    if ranker.int8:
        raise ValueError("the ranker was loaded for serving (int8) and cannot be fine-tuned: load it with load_models(..., trainable=True)")
    started = time.time()
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    unknown = sorted({i for s in slates for i in (*s.history, *s.shown) if i not in catalog.items})
    if unknown:
        raise ValueError(f"impressions name items not in the catalog: {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    groups = feedback_groups(slates, config.negatives, rng)
    if not groups:
        raise ValueError("no slate has both an engaged and a skipped item: nothing to learn from")
    log(f"fine-tuning the ranker on {len(groups)} engaged items from {len(slates)} slates")
    fit = train_listwise(ranker, catalog, EngagedOverSkipped(groups, source), config, rng, log)
    if out_dir is not None:  # None: the caller decides whether, and where, to keep it
        ranker.save(out_dir, {"feedback_slates": len(slates), "feedback_groups": len(groups)})
    return FeedbackReport(len(slates), len(groups), float(np.mean(fit.losses)), time.time() - started, str(out_dir or ""))
