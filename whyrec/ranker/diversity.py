"""Maximal marginal relevance: build the slate one item at a time, trading the ranker's score
against similarity to the items already chosen, so a slate is not ten near-identical items."""

from __future__ import annotations

from typing import Callable

import numpy as np

from whyrec.core.schema import RankedItem


def diversify(ranked: list[RankedItem], vector: Callable[[str], np.ndarray], k: int, weight: float) -> list[RankedItem]:
    """The slate: the k items chosen greedily by (1 - weight) * relevance - weight * (max cosine to
    the chosen), relevance being the ranker score scaled to [0, 1] over `ranked`, `vector(item_id)`
    an item's unit embedding. weight 0 keeps the ranker's order (the top k)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"diversity weight must be between 0 and 1, got {weight}")
    if weight == 0.0 or len(ranked) <= 1:
        return ranked[:k]
    scores = np.array([r.ranker_score for r in ranked], dtype=np.float64)
    spread = scores.max() - scores.min()
    relevance = (scores - scores.min()) / spread if spread > 0 else np.ones_like(scores)
    vectors = np.stack([vector(r.item_id) for r in ranked])
    similarity = vectors @ vectors.T
    chosen = [0]
    closest = similarity[0].copy()  # each item's highest similarity to anything chosen so far
    while len(chosen) < min(k, len(ranked)):
        value = (1 - weight) * relevance - weight * closest
        value[chosen] = -np.inf
        pick = int(np.argmax(value))
        chosen.append(pick)
        closest = np.maximum(closest, similarity[pick])
    return [ranked[i] for i in chosen]
