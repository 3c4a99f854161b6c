"""Collaborative candidates: items that other shoppers took up right after the items in this
shopper's recent history. Counts are built from sequences (time-ordered item ids), nearer
neighbours weighing more, and damped by both items' popularity so that best-sellers do not
follow everything."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Iterable

from whyrec.core.schema import Candidate

RECENCY_DECAY = 0.8
BACKWARD_WEIGHT = 0.5  # "bought B, then A" says less about A -> B than "A, then B"


class CooccurrenceRetriever:
    def __init__(self, sequences: Iterable[list[str]], window: int = 3, history_window: int = 5):
        self.history_window = history_window
        counts: dict[str, Counter] = defaultdict(Counter)
        popularity: Counter = Counter()
        for sequence in sequences:
            popularity.update(sequence)
            for i, a in enumerate(sequence):
                for gap in range(1, window + 1):
                    if i + gap >= len(sequence):
                        break
                    b = sequence[i + gap]
                    if a != b:
                        counts[a][b] += 1.0 / gap
                        counts[b][a] += BACKWARD_WEIGHT / gap
        self.popularity = popularity
        self.neighbours: dict[str, dict[str, float]] = {
            a: {b: c / math.sqrt(popularity[a] * popularity[b]) for b, c in row.items()} for a, row in counts.items()
        }

    def item_scores(self, history: list[str]) -> Counter:
        """Every item that follows some recent history item, with its score."""
        return self._scores(history)[0]

    def _scores(self, history: list[str]) -> tuple[Counter, dict[str, Counter]]:
        """Total score per item, and per item how much each history item gave it."""
        recent = history[-self.history_window :]
        total: Counter = Counter()
        given: dict[str, Counter] = defaultdict(Counter)
        for age, source in enumerate(reversed(recent)):
            weight = RECENCY_DECAY**age
            for item_id, score in self.neighbours.get(source, {}).items():
                total[item_id] += weight * score
                given[item_id][source] += weight * score
        return total, given

    def contributors(self, history: list[str]) -> dict[str, list[str]]:
        """Per item, the recent history items that gave it co-occurrence score, most first."""
        return {item_id: [h for h, _ in given.most_common()] for item_id, given in self._scores(history)[1].items()}

    def candidates(self, history: list[str], n: int, exclude: set[str] = frozenset()) -> list[Candidate]:
        total, given = self._scores(history)
        blocked = set(exclude) | set(history)
        ranked = [(i, s) for i, s in total.most_common() if i not in blocked][:n]
        return [Candidate(i, float(s), tuple(h for h, _ in given[i].most_common(2))) for i, s in ranked]

    def score(self, history: list[str], item_id: str) -> float:
        return float(self.item_scores(history).get(item_id, 0.0))


