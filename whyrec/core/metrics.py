"""Ranking metrics from the 1-based rank of the held-out item (None = not ranked)."""

from __future__ import annotations

import math


def ndcg_at(rank: int | None, k: int) -> float:
    return 1.0 / math.log2(rank + 1) if rank is not None and rank <= k else 0.0


def recall_at(rank: int | None, k: int) -> float:
    return 1.0 if rank is not None and rank <= k else 0.0


def reciprocal_rank(rank: int | None) -> float:
    return 1.0 / rank if rank is not None else 0.0


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
