"""The candidate stage: text-embedding, co-occurrence and sequence-model scores, each standardised
over the catalog for this shopper and summed with weights tuned on validation shoppers.

The standardised per-source scores travel with each candidate as features, so the ranker can
weigh the sources again next to what the cross-encoder reads.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from whyrec.core.catalog import Interaction
from whyrec.core.follows import FollowCounts
from whyrec.core.schema import NEXT_RANK_LIMIT, Candidate, Evidence
from whyrec.retrieval.cooccurrence import CooccurrenceRetriever
from whyrec.retrieval.retriever import EmbeddingRetriever
from whyrec.retrieval.sequential import SequenceRetriever

FEATURES = ("embedding", "cooccurrence", "sequence")
WEIGHT_GRID = (0.0, 0.25, 0.5, 1.0)  # for embedding and co-occurrence; the sequence model's weight is 1


@dataclass(frozen=True)
class FusionWeights:
    embedding: float = 0.5
    cooccurrence: float = 0.5
    sequence: float = 1.0

    def vector(self) -> np.ndarray:
        return np.array([self.embedding, self.cooccurrence, self.sequence], dtype=np.float32)


class FusedRetriever:
    feature_names = FEATURES

    def __init__(
        self,
        embedding: EmbeddingRetriever,
        cooccurrence: CooccurrenceRetriever,
        sequence: SequenceRetriever,
        weights: FusionWeights = FusionWeights(),
        follows: FollowCounts | None = None,
    ):
        if sequence.item_ids != embedding.index.item_ids:
            raise ValueError("the sequence model and the item index list different items; retrain with `whyrec train`")
        self.embedding = embedding
        self.cooccurrence = cooccurrence
        self.sequence = sequence
        self.weights = weights
        self.follows = follows  # the counts collaborative reasons state; None: no such reasons
        # Index row -> sequence model row (-1: an item added since training), once items are added
        # or removed; None while the index lists the model's items row for row.
        self._sequence_columns: np.ndarray | None = None

    @property
    def index(self):
        return self.embedding.index

    @property
    def item_ids(self) -> list[str]:
        """The live items, row for row of every score matrix: only these are ever scored or proposed."""
        return self.embedding.index.item_ids

    @property
    def position(self) -> dict[str, int]:
        return self.embedding.index.position

    def add_items(self, item_ids: list[str], vectors: np.ndarray) -> None:
        """New items become candidates at once, found by their text; co-occurrence and the sequence
        model know them only after the next `whyrec train`, and are neutral about them until then.
        Not safe against concurrent reads: the caller holds them off (the Recommender's lock)."""
        self.index.add(item_ids, vectors)
        self._align_sequence()

    def remove_items(self, item_ids: list[str]) -> None:
        """Removed items are never scored or proposed again by any source: every source is read over
        the index's live items only. They may stay in histories (the sequence model still reads them there)."""
        self.index.remove(item_ids)
        self._align_sequence()

    def _align_sequence(self) -> None:
        self._sequence_columns = np.array([self.sequence.row.get(i, 0) - 1 for i in self.item_ids], dtype=np.int64)

    def _sequence_scores(self, histories: list[list[str]]) -> np.ndarray:
        """[len(histories), len(item_ids)]: the sequence model's scores of the live items. An item it
        was not trained on gets the mean score of the others: no opinion, neither for nor against."""
        scores = self.sequence.score_matrix(histories)
        columns = self._sequence_columns
        if columns is None:
            return scores
        known = columns >= 0
        aligned = np.zeros((len(histories), len(columns)), dtype=np.float32)
        aligned[:, known] = scores[:, columns[known]]
        if known.any() and not known.all():
            aligned[:, ~known] = aligned[:, known].mean(axis=1, keepdims=True)
        return aligned

    def source_scores(self, histories: list[list[str]]) -> np.ndarray:
        """[len(histories), 3, n_items]: each source's scores, standardised over the items not in the history."""
        raw = np.empty((len(histories), len(FEATURES), len(self.item_ids)), dtype=np.float32)
        raw[:, 2, :] = self._sequence_scores(histories)
        for h, history in enumerate(histories):
            # A history of removed items only has no text to query with: the text source is silent.
            live = any(i in self.position for i in history)
            raw[h, 0, :] = self.embedding.index.vectors @ self.embedding.query(history) if live else 0.0
            co = np.zeros(len(self.item_ids), dtype=np.float32)
            for item_id, score in self.cooccurrence.item_scores(history).items():
                if item_id in self.position:  # not a removed item
                    co[self.position[item_id]] = score
            # Co-occurrence scores are heavy-tailed; the log keeps one strong pair from drowning the rest.
            raw[h, 1, :] = np.log1p(10.0 * co)
            keep = np.ones(len(self.item_ids), dtype=bool)
            keep[[self.position[i] for i in history if i in self.position]] = False
            if not keep.any():
                keep[:] = True
            mean = raw[h][:, keep].mean(axis=1, keepdims=True)
            std = raw[h][:, keep].std(axis=1, keepdims=True) + 1e-6
            raw[h] = (raw[h] - mean) / std
        return raw

    def fused(self, scores: np.ndarray) -> np.ndarray:
        """Weighted sum over the source axis of source_scores' output."""
        return np.tensordot(self.weights.vector(), scores, axes=([0], [-2]))

    def candidates(self, history: list[str], n: int, exclude: set[str] = frozenset()) -> list[Candidate]:
        scores = self.source_scores([history])[0]
        fused = self.fused(scores)
        blocked = set(exclude) | set(history)
        contributors = self.cooccurrence.contributors(history)
        found = []
        for pos in np.argsort(-fused, kind="stable"):
            item_id = self.item_ids[pos]
            if item_id in blocked:
                continue
            found.append(
                Candidate(item_id, float(fused[pos]), self.matched_history(history, item_id, contributors), tuple(float(x) for x in scores[:, pos]))
            )
            if len(found) == n:
                break
        return found

    def features(self, histories: list[list[str]], item_ids: list[str]) -> np.ndarray:
        """[len(histories), 3]: the standardised source scores of item_ids[i] for histories[i]."""
        if not item_ids:
            return np.zeros((0, len(FEATURES)), np.float32)
        # Attribution asks for the same few leave-one-out histories once per target: score each once.
        distinct = list(dict.fromkeys(tuple(h) for h in histories))
        row = {h: r for r, h in enumerate(distinct)}
        scores = self.source_scores([list(h) for h in distinct])
        return np.stack([scores[row[tuple(h)], :, self.position[i]] for h, i in zip(histories, item_ids)])

    def candidate(self, history: list[str], item_id: str) -> Candidate:
        """Any item as a candidate for this history, also one the candidate stage did not propose."""
        features = self.features([history], [item_id])[0]
        return Candidate(item_id, float(self.weights.vector() @ features), self.matched_history(history, item_id), tuple(map(float, features)))

    def evidence(self, history_item_ids: list[str], item_ids: list[str], shopper_events: Iterable[Interaction] = ()) -> dict[tuple[str, str], Evidence]:
        """What other shoppers did that ties each history item to each item: the shoppers who went
        from one to the other (`shopper_events`, the shopper's own counted events, are taken out,
        so the counts are of *other* shoppers), and the item's place among the sequence model's
        predicted next items after the history item alone (when it is within NEXT_RANK_LIMIT)."""
        history_item_ids = [h for h in dict.fromkeys(history_item_ids) if h in self.position]
        if not history_item_ids or not item_ids:
            return {}
        own = FollowCounts(shopper_events, self.follows.window) if self.follows else None
        scores = self._sequence_scores([[h] for h in history_item_ids])
        out = {}
        for row, h in zip(scores, history_item_ids):
            row = row.copy()
            row[self.position[h]] = -np.inf  # the history item itself is never "next"
            for item_id in item_ids:
                if item_id == h or item_id not in self.position:
                    continue
                place = int(np.sum(row > row[self.position[item_id]])) + 1
                out[(h, item_id)] = Evidence(
                    h,
                    item_id,
                    bought_after=self.follows.bought_after(h, item_id) - own.bought_after(h, item_id) if self.follows else 0,
                    viewed_after=self.follows.viewed_after(h, item_id) - own.viewed_after(h, item_id) if self.follows else 0,
                    # An item added since training has no place of its own among the model's picks.
                    next_rank=place if place <= NEXT_RANK_LIMIT and item_id in self.sequence.row else None,
                )
        return out

    def matched_history(self, history: list[str], item_id: str, contributors: dict[str, list[str]] | None = None) -> tuple[str, ...]:
        """The history items that led to this candidate: those other shoppers bought it after,
        else the ones whose text it is closest to."""
        if contributors is None:
            contributors = self.cooccurrence.contributors(history)
        return tuple(contributors.get(item_id, ())[:2]) or self.embedding.matched_history(history, item_id)


def tune_weights(retriever: FusedRetriever, cases: list[tuple[list[str], str]], depth: int = 50) -> tuple[FusionWeights, float]:
    """The grid weights with the best recall@depth of the held-out next item; the candidate
    stage's job is to let the ranker see the right item at all."""
    scores = retriever.source_scores([h for h, _ in cases])
    targets = np.array([retriever.position[t] for _, t in cases])
    for h, (history, _) in enumerate(cases):
        scores[h][:, [retriever.position[i] for i in history]] = -np.inf
    best = (FusionWeights(), -1.0)
    for e, c in itertools.product(WEIGHT_GRID, WEIGHT_GRID):
        weights = FusionWeights(e, c, 1.0)
        with np.errstate(invalid="ignore"):
            fused = np.tensordot(weights.vector(), scores, axes=([0], [1]))
        fused = np.nan_to_num(fused, nan=-np.inf)
        target_scores = fused[np.arange(len(cases)), targets]
        recall = float(np.mean(np.sum(fused > target_scores[:, None], axis=1) < depth))
        if recall > best[1]:
            best = (weights, recall)
    return best
