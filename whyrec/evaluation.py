"""Offline evaluation of the ranking stages against baselines, in one run, on one protocol.

Leave-one-out: each shopper's last item is the target, everything before it the history. Every
method ranks the full catalog with the shopper's history items removed, and is scored by the
target's rank. Baselines and the collaborative statistics see only the histories (never a
target); the ranker checkpoint was trained on the split that also holds out the validation item.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from whyrec.catalog import Catalog
from whyrec.metrics import mean, ndcg_at, recall_at, reciprocal_rank
from whyrec.ranker import CrossEncoderRanker
from whyrec.retrieval import EmbeddingRetriever
from whyrec.retrieval.cooccurrence import CooccurrenceRetriever
from whyrec.split import leave_one_out

PROTOCOL = (
    "leave-one-out: last item of each shopper = target, all earlier items = history; "
    "full-catalog ranking with the shopper's history items excluded; "
    "popularity and co-occurrence counted on histories only; whyrec = ranker over the top-{n} "
    "retrieval candidates, then the remaining items in retrieval order"
)


@dataclass(frozen=True)
class Metrics:
    ndcg10: float
    recall10: float
    recall50: float
    mrr: float

    @classmethod
    def from_ranks(cls, ranks: list[float | None]) -> "Metrics":
        return cls(
            mean([ndcg_at(r, 10) for r in ranks]),
            mean([recall_at(r, 10) for r in ranks]),
            mean([recall_at(r, 50) for r in ranks]),
            mean([reciprocal_rank(r) for r in ranks]),
        )

    def to_dict(self) -> dict[str, float]:
        return {"ndcg@10": round(self.ndcg10, 5), "recall@10": round(self.recall10, 5), "recall@50": round(self.recall50, 5), "mrr": round(self.mrr, 5)}


def rank_in(scores: np.ndarray, target: int, excluded: list[int]) -> float:
    """1-based rank of `target` among the non-excluded positions; ties count half (their expected rank)."""
    scores = scores.astype(np.float64).copy()
    scores[excluded] = -np.inf
    higher = int(np.sum(scores > scores[target]))
    ties = int(np.sum(scores == scores[target])) - 1
    return 1 + higher + ties / 2


def evaluate(
    catalog: Catalog,
    retriever: EmbeddingRetriever,
    ranker: CrossEncoderRanker,
    candidates: int = 50,
    users: int | None = None,
    seed: int = 0,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
) -> dict:
    cases = leave_one_out(catalog).test
    if users is not None and users < len(cases):
        cases = random.Random(seed).sample(sorted(cases, key=lambda c: c.user_id), users)
    index = retriever.index
    ids = index.item_ids
    position = index.position

    histories = [c.history for c in leave_one_out(catalog).test]  # every shopper's, not only the sample
    popularity = np.zeros(len(ids))
    for history in histories:
        for item_id in history:
            popularity[position[item_id]] += 1
    cooccurrence = CooccurrenceRetriever(histories, history_window=retriever.window)

    ranks: dict[str, list[float | None]] = {m: [] for m in ("whyrec", "popularity", "embedding", "cooccurrence")}
    candidate_ranks: list[float] = []
    slates: list[list[str]] = []
    log(f"evaluating {len(cases)} shoppers on {catalog.name} ({len(ids)} items)")
    for case in tqdm(cases, desc="eval", unit="shopper", file=sys.stderr, dynamic_ncols=True):
        excluded = [position[i] for i in case.history]
        target = position[case.target]
        ranks["popularity"].append(rank_in(popularity, target, excluded))

        embedding = index.vectors @ retriever.query(case.history)
        embedding_rank = rank_in(embedding, target, excluded)
        ranks["embedding"].append(embedding_rank)
        candidate_ranks.append(embedding_rank)

        co_scores = np.zeros(len(ids))
        for item_id, score in cooccurrence.item_scores(case.history).items():
            co_scores[position[item_id]] = score
        ranks["cooccurrence"].append(rank_in(co_scores, target, excluded))

        found = retriever.candidates(case.history, candidates)
        reranked = ranker.rank([catalog.items[i] for i in case.history], found, catalog.items)
        order = [r.item_id for r in reranked]
        slates.append(order[:10])
        ranks["whyrec"].append(order.index(case.target) + 1 if case.target in order else embedding_rank)

    vectors = {i: index.vector(i) for slate in slates for i in slate}
    return {
        "protocol": PROTOCOL.format(n=candidates),
        "data": catalog.name,
        "users": len(cases),
        "methods": {name: Metrics.from_ranks(r).to_dict() for name, r in ranks.items()},
        "candidates": {
            "source": "embedding",
            "recall@50": round(mean([recall_at(r, 50) for r in candidate_ranks]), 5),
            "recall@100": round(mean([recall_at(r, 100) for r in candidate_ranks]), 5),
        },
        "diversity": {
            "intra_list_diversity@10": round(mean([_intra_list_diversity([vectors[i] for i in s]) for s in slates]), 5),
            "catalog_coverage@10": round(len({i for s in slates for i in s}) / len(ids), 5),
        },
    }


def _intra_list_diversity(vectors: list[np.ndarray]) -> float:
    """Mean pairwise cosine distance within a slate (vectors are normalised)."""
    if len(vectors) < 2:
        return 0.0
    m = np.stack(vectors)
    sims = m @ m.T
    n = len(vectors)
    return float((n * n - sims.sum()) / (n * (n - 1)))
