"""Offline evaluation of the ranking stages against baselines, in one run, on one protocol.

Leave-one-out: each shopper's last item is the target, everything before it the history. Every
method ranks the full catalog with the shopper's history items removed, and is scored by the
target's rank. Baselines and the collaborative statistics see only the histories (never a
target); the ranker checkpoint was trained on the split that also holds out the validation item.
"""

from __future__ import annotations

import random
import sys
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from whyrec.core.catalog import Catalog
from whyrec.core.metrics import mean, ndcg_at, recall_at, reciprocal_rank
from whyrec.core.schema import Candidate
from whyrec.core.split import Case, leave_one_out
from whyrec.ranker import CrossEncoderRanker, diversify
from whyrec.retrieval import FusedRetriever

if TYPE_CHECKING:
    from whyrec.offline.sasrec_baseline import ReusedSasrecRun, SasrecRun

CHUNK = 256  # shoppers whose retrieval scores are computed together
METRIC_KEYS = ("ndcg@10", "recall@10", "recall@50", "mrr")
# How SASRec's figures came about, reported beside them; "reused_from" names a cached result.
SASREC_RUN_KEYS = ("epochs_run", "best_epoch", "train_seconds", "refit_seconds", "reused_from")

PROTOCOL = (
    "leave-one-out: last item of each shopper = target, all earlier items = history; "
    "full-catalog ranking with the shopper's history items excluded; "
    "popularity and co-occurrence counted on histories only; the sequence model and SASRec early-stopped on "
    "each history's last item (the validation target) with the items before it, then refit for that many "
    "epochs on the whole histories (no target is ever a training label); whyrec = the cross-encoder "
    "ranker over the top-{n} fused retrieval candidates, then the remaining items in fused retrieval order"
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


def evaluated_cases(cases: list[Case], users: int | None, seed: int) -> list[Case]:
    """The shoppers an evaluation scores: all of them, or a fixed sample of `users` drawn with `seed`."""
    if users is None or users >= len(cases):
        return cases
    return random.Random(seed).sample(sorted(cases, key=lambda c: c.user_id), users)


def evaluate(
    catalog: Catalog,
    retriever: FusedRetriever,
    ranker: CrossEncoderRanker,
    rerank: int = 20,
    users: int | None = None,
    seed: int = 0,
    diversity: float = 0.0,
    sasrec: Callable[[list[str]], "SasrecRun | ReusedSasrecRun"] | None = None,
    threads_alone: int | None = None,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
) -> dict:
    """`retriever`'s co-occurrence must be counted on the test histories (see module doc);
    `sasrec` starts SASRec on the evaluated shoppers' ids (or reuses its cached result); it trains
    while the other methods are scored, and its metrics join the report at the end. Once it is not
    (or no longer) training, scoring runs on `threads_alone` torch threads."""
    split = leave_one_out(catalog)
    cases = evaluated_cases(split.test, users, seed)
    ids, position = retriever.item_ids, retriever.position

    popularity = np.zeros(len(ids))
    for case in split.test:  # every shopper's history, not only the sample
        for item_id in case.history:
            popularity[position[item_id]] += 1

    methods = ("whyrec", "popularity", "embedding", "cooccurrence", "sequence_model", "fused_retrieval")
    ranks: dict[str, list[float | None]] = {m: [] for m in methods}
    slates: list[list[str]] = []
    log(f"evaluating {len(cases)} shoppers on {catalog.name} ({len(ids)} items)")
    sasrec_run = sasrec([c.user_id for c in cases]) if sasrec is not None else None

    def reclaim_threads() -> None:
        if threads_alone and torch.get_num_threads() != threads_alone and not (sasrec_run is not None and sasrec_run.running):
            log(f"SASRec is not training: scoring on {threads_alone} threads")
            torch.set_num_threads(threads_alone)

    try:
        _score(catalog, retriever, ranker, cases, popularity, rerank, diversity, ranks, slates, reclaim_threads)
    except BaseException:
        if sasrec_run is not None:
            sasrec_run.stop()
        raise

    results = {name: Metrics.from_ranks(r).to_dict() for name, r in ranks.items()}
    sasrec_training = {}
    if sasrec_run is not None:
        sasrec_result = sasrec_run.result()
        results["sasrec"] = {key: round(sasrec_result[key], 5) for key in METRIC_KEYS}
        sasrec_training = {k: sasrec_result[k] for k in SASREC_RUN_KEYS if k in sasrec_result}
    index = retriever.index
    return {
        "protocol": PROTOCOL.format(n=rerank),
        "data": catalog.name,
        "users": len(cases),
        "methods": results,
        "candidates": {
            "source": "fused: text embedding + item co-occurrence + sequence model",
            "weights": asdict(retriever.weights),
            "recall@50": round(mean([recall_at(r, 50) for r in ranks["fused_retrieval"]]), 5),
            "recall@100": round(mean([recall_at(r, 100) for r in ranks["fused_retrieval"]]), 5),
        },
        "diversity": {
            "mmr_weight": diversity,
            "intra_list_diversity@10": round(mean([_intra_list_diversity([index.vector(i) for i in s]) for s in slates]), 5),
            "catalog_coverage@10": round(len({i for s in slates for i in s}) / len(ids), 5),
        },
        **({"sasrec_training": sasrec_training} if sasrec_training else {}),
    }


def _score(
    catalog: Catalog,
    retriever: FusedRetriever,
    ranker: CrossEncoderRanker,
    cases: list[Case],
    popularity: np.ndarray,
    rerank: int,
    diversity: float,
    ranks: dict[str, list[float | None]],
    slates: list[list[str]],
    between_chunks: Callable[[], None],
) -> None:
    """Append each case's rank under every whyrec-side method to `ranks`, and its top 10 to `slates`."""
    ids, position = retriever.item_ids, retriever.position
    bar = tqdm(total=len(cases), desc="eval", unit="shopper", file=sys.stderr, dynamic_ncols=True)
    for start in range(0, len(cases), CHUNK):
        between_chunks()
        chunk = cases[start : start + CHUNK]
        scores = retriever.source_scores([c.history for c in chunk])
        fused_ranks, candidate_lists = [], []
        for case, source_scores in zip(chunk, scores):
            excluded = [position[i] for i in case.history]
            target = position[case.target]
            ranks["popularity"].append(rank_in(popularity, target, excluded))
            for name, row in zip(("embedding", "cooccurrence", "sequence_model"), source_scores):
                ranks[name].append(rank_in(row, target, excluded))
            fused = retriever.fused(source_scores)
            fused_ranks.append(rank_in(fused, target, excluded))
            blocked = set(case.history)
            top = [p for p in np.argsort(-fused, kind="stable")[: rerank + len(blocked)] if ids[p] not in blocked][:rerank]
            candidate_lists.append([Candidate(ids[p], float(fused[p]), (), tuple(map(float, source_scores[:, p]))) for p in top])
        # One batched cross-encoder pass over the whole chunk's candidates.
        ranked_lists = ranker.rank_many([[catalog.items[i] for i in c.history] for c in chunk], candidate_lists, catalog.items)
        for case, ranked, fused_rank in zip(chunk, ranked_lists, fused_ranks):
            ranks["fused_retrieval"].append(fused_rank)
            slate = diversify(ranked, retriever.index.vector, 10, diversity)
            chosen = {r.item_id for r in slate}
            order = [r.item_id for r in slate] + [r.item_id for r in ranked if r.item_id not in chosen]
            slates.append(order[:10])
            ranks["whyrec"].append(order.index(case.target) + 1 if case.target in order else fused_rank)
        bar.update(len(chunk))
    bar.close()


def _intra_list_diversity(vectors: list[np.ndarray]) -> float:
    """Mean pairwise cosine distance within a slate (vectors are normalised)."""
    if len(vectors) < 2:
        return 0.0
    m = np.stack(vectors)
    sims = m @ m.T
    n = len(vectors)
    return float((n * n - sims.sum()) / (n * (n - 1)))
