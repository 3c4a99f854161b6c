"""Candidates from a shopper's history: the recency-weighted mean of the recent history vectors,
searched in the item index. Each candidate names the history items it is closest to."""

from __future__ import annotations

import numpy as np

from whyrec.core.schema import Candidate
from whyrec.retrieval.index import ItemIndex

RECENCY_DECAY = 0.8  # weight of the k-th most recent history item: 0.8**k


class EmbeddingRetriever:
    def __init__(self, index: ItemIndex, history_window: int = 5, matches_per_candidate: int = 2):
        self.index = index
        self.window = history_window
        self.matches_per_candidate = matches_per_candidate

    def query(self, history: list[str]) -> np.ndarray:
        recent = [i for i in history if i in self.index.position][-self.window :]
        if not recent:
            raise ValueError("history has no item in the index")
        vectors = np.stack([self.index.vector(i) for i in recent])
        weights = RECENCY_DECAY ** np.arange(len(recent))[::-1]
        query = (weights[:, None] * vectors).sum(axis=0)
        return query / max(np.linalg.norm(query), 1e-12)

    def candidates(self, history: list[str], n: int, exclude: set[str] = frozenset()) -> list[Candidate]:
        query = self.query(history)
        hits = self.index.search(query, n, exclude=set(exclude) | set(history))
        return [Candidate(item_id, score, self.matched_history(history, item_id)) for item_id, score in hits]

    def score(self, history: list[str], item_id: str) -> float:
        """Retrieval score of any item (also one outside the candidates)."""
        return float(self.query(history) @ self.index.vector(item_id))

    def matched_history(self, history: list[str], item_id: str) -> tuple[str, ...]:
        recent = [i for i in history if i in self.index.position][-self.window :]
        if not recent:
            return ()
        sims = np.stack([self.index.vector(i) for i in recent]) @ self.index.vector(item_id)
        order = np.argsort(-sims)[: self.matches_per_candidate]
        return tuple(recent[i] for i in order if sims[i] > 0)
