"""Collaborative candidates from the order of purchases: a small self-attentive next-item model
(SASRec-style) trained on the shop's own sequences with a softmax over the whole catalog.

Each item is an id embedding plus a learned projection of its text embedding, so items with few
purchases still sit near the items they read like. The model is small (64 dimensions, two layers)
and trains in minutes on two CPU cores; it gives a score for every catalog item in one pass.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from whyrec.core.errors import ConfigError
from whyrec.core.schema import Candidate
from whyrec.core.storage import replaced_folder

CHECKPOINT = "sequence_model.pt"
META = "sequence_model.json"


@dataclass(frozen=True)
class SequenceConfig:
    dim: int = 64
    layers: int = 2
    heads: int = 2
    max_length: int = 50
    dropout: float = 0.5
    lr: float = 3e-3
    batch_size: int = 256
    max_epochs: int = 200
    patience: int = 5  # validations without improvement before stopping
    validate_every: int = 2  # epochs
    seed: int = 0


class NextItemModel(nn.Module):
    """Position-aware causal self-attention over item representations; the score of item j after
    a sequence is the dot product of the last hidden state with item j's representation."""

    def __init__(self, n_items: int, text_vectors: np.ndarray | None, config: SequenceConfig):
        super().__init__()
        self.config = config
        self.item_embedding = nn.Embedding(n_items + 1, config.dim, padding_idx=0)  # row 0 = padding
        nn.init.normal_(self.item_embedding.weight, std=0.02)
        if text_vectors is not None:
            padded = np.vstack([np.zeros((1, text_vectors.shape[1]), dtype=np.float32), text_vectors])
            self.register_buffer("text", torch.tensor(padded, dtype=torch.float32))
            self.text_projection = nn.Linear(text_vectors.shape[1], config.dim, bias=False)
        else:
            self.text = None
            self.text_projection = None
        self.position_embedding = nn.Embedding(config.max_length, config.dim)
        layer = nn.TransformerEncoderLayer(
            config.dim, config.heads, dim_feedforward=config.dim, dropout=config.dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.dropout = nn.Dropout(config.dropout)
        self.norm = nn.LayerNorm(config.dim)

    def item_matrix(self) -> torch.Tensor:
        items = self.item_embedding.weight
        if self.text_projection is not None:
            items = items + self.text_projection(self.text)
        return items

    def hidden(self, sequences: torch.Tensor) -> torch.Tensor:
        """[batch, length] item rows (0 = padding, left-padded) -> [batch, length, dim]."""
        length = sequences.shape[1]
        # Sequences are right-aligned in a window of max_length; a batch may be cut to its longest
        # sequence, so positions count from the window's start and the last item is always at the end.
        positions = torch.arange(self.config.max_length - length, self.config.max_length, device=sequences.device)
        x = self.item_matrix()[sequences] * math.sqrt(self.config.dim) + self.position_embedding(positions)
        x = self.dropout(x) * (sequences > 0).unsqueeze(-1)
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=sequences.device), diagonal=1)
        x = self.encoder(x, mask=causal)
        return self.norm(x)

    def last_scores(self, sequences: torch.Tensor) -> torch.Tensor:
        """Scores of every item (row 0 = padding) after each sequence: [batch, n_items + 1]."""
        return self.hidden(sequences)[:, -1, :] @ self.item_matrix().T


class SequenceRetriever:
    """Candidate source over a trained NextItemModel; item ids map to model rows 1..n."""

    def __init__(self, model: NextItemModel, item_ids: list[str], batch_size: int = 256, metadata: dict | None = None):
        self.model = model.eval()
        self.metadata = metadata or {}  # what was saved with the model (e.g. the fusion weights)
        self.item_ids = list(item_ids)
        self.row = {item_id: i + 1 for i, item_id in enumerate(self.item_ids)}
        self.batch_size = batch_size

    def _encode(self, histories: list[list[str]]) -> torch.Tensor:
        rows = [[self.row[i] for i in history if i in self.row][-self.model.config.max_length :] for history in histories]
        batch = np.zeros((len(histories), max(1, max(map(len, rows), default=1))), dtype=np.int64)
        for b, r in enumerate(rows):
            if r:
                batch[b, -len(r) :] = r
        return torch.from_numpy(batch)

    @torch.no_grad()
    def score_matrix(self, histories: list[list[str]]) -> np.ndarray:
        """[len(histories), len(item_ids)] scores, aligned with item_ids."""
        out = []
        for start in range(0, len(histories), self.batch_size):
            scores = self.model.last_scores(self._encode(histories[start : start + self.batch_size]))
            out.append(scores[:, 1:].numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.item_ids)), dtype=np.float32)

    def item_scores(self, history: list[str]) -> np.ndarray:
        return self.score_matrix([history])[0]

    def candidates(self, history: list[str], n: int, exclude: set[str] = frozenset()) -> list[Candidate]:
        scores = self.item_scores(history)
        blocked = set(exclude) | set(history)
        found = []
        for pos in np.argsort(-scores, kind="stable"):
            item_id = self.item_ids[pos]
            if item_id not in blocked:
                found.append(Candidate(item_id, float(scores[pos])))
                if len(found) == n:
                    break
        return found

    def score(self, history: list[str], item_id: str) -> float:
        return float(self.item_scores(history)[self.row[item_id] - 1])

    def save(self, folder: Path, metadata: dict) -> None:
        with replaced_folder(folder) as staging:
            torch.save(self.model.state_dict(), staging / CHECKPOINT)
            meta = {"config": asdict(self.model.config), "item_ids": self.item_ids, "text": self.model.text is not None, **metadata}
            (staging / META).write_text(json.dumps(meta))

    @classmethod
    def load(cls, folder: Path, text_vectors: np.ndarray | None) -> "SequenceRetriever":
        path = folder / META  # named in the error: the file that is missing or corrupt
        try:
            meta = json.loads(path.read_text())
            config = SequenceConfig(**meta["config"])
            model = NextItemModel(len(meta["item_ids"]), text_vectors if meta["text"] else None, config)
            path = folder / CHECKPOINT
            model.load_state_dict(torch.load(path, weights_only=True))
        except Exception as exc:  # noqa: BLE001 - json, pickle and torch each raise their own types for a damaged file
            reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            raise ConfigError(
                f"cannot read the sequence model file {path} ({type(exc).__name__}: {reason}); run `whyrec train --data DIR` to rebuild it"
            ) from None
        return cls(model, meta["item_ids"], metadata=meta)


def train_sequence_model(
    item_ids: list[str],
    train_sequences: list[list[str]],
    valid_cases: list[tuple[list[str], str]],
    text_vectors: np.ndarray | None,
    config: SequenceConfig = SequenceConfig(),
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr),
) -> tuple[SequenceRetriever, dict]:
    """Train on every next-item step of `train_sequences` (softmax over the whole catalog), keep the
    epoch with the best validation NDCG@10 (history items excluded from the ranking)."""
    model, retriever, rows, lengths, optimizer, rng = _training_setup(item_ids, train_sequences, text_vectors, config)
    best, best_state, best_epoch, stale = -1.0, None, 0, 0
    started = time.time()
    history = []
    bar = tqdm(range(1, config.max_epochs + 1), desc="sequence model", unit="epoch", file=sys.stderr, dynamic_ncols=True)
    for epoch in bar:
        loss = _train_epoch(model, rows, lengths, optimizer, config, rng)
        if epoch % config.validate_every:
            continue
        model.eval()
        ndcg = validation_ndcg(retriever, valid_cases)
        history.append({"epoch": epoch, "valid_ndcg@10": round(ndcg, 5)})
        bar.set_postfix(loss=f"{loss:.3f}", ndcg=f"{ndcg:.4f}")
        if ndcg > best:
            best, best_epoch, stale = ndcg, epoch, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= config.patience:
                break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    report = {"best_epoch": best_epoch, "valid_ndcg@10": round(best, 5), "seconds": round(time.time() - started, 1), "history": history}
    log(f"sequence model: best validation NDCG@10 {best:.4f} at epoch {best_epoch} ({report['seconds']:.0f}s)")
    return retriever, report


def refit_sequence_model(
    item_ids: list[str],
    sequences: list[list[str]],
    text_vectors: np.ndarray | None,
    epochs: int,
    config: SequenceConfig = SequenceConfig(),
) -> SequenceRetriever:
    """A fresh model trained for a fixed number of epochs (the early-stopped count of
    train_sequence_model) on longer sequences: the transitions the validation split held back are
    the shop's most recent ones, and the served model should have learned them."""
    model, retriever, rows, lengths, optimizer, rng = _training_setup(item_ids, sequences, text_vectors, config)
    for _ in tqdm(range(epochs), desc="sequence model refit", unit="epoch", file=sys.stderr, dynamic_ncols=True):
        _train_epoch(model, rows, lengths, optimizer, config, rng)
    model.eval()
    return retriever


def _training_setup(item_ids, sequences, text_vectors, config):
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = NextItemModel(len(item_ids), text_vectors, config)
    retriever = SequenceRetriever(model, item_ids)
    length = config.max_length + 1
    rows = np.zeros((len(sequences), length), dtype=np.int64)
    for b, sequence in enumerate(sequences):
        ids = [retriever.row[i] for i in sequence if i in retriever.row][-length:]
        if ids:
            rows[b, -len(ids) :] = ids
    rows = rows[(rows > 0).sum(axis=1) >= 2]
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    return model, retriever, rows, (rows > 0).sum(axis=1), optimizer, rng


def _train_epoch(model: NextItemModel, rows: np.ndarray, lengths: np.ndarray, optimizer, config: SequenceConfig, rng: np.random.Generator) -> float:
    """One pass over every next-item step; returns the mean batch loss."""
    model.train()
    losses = []
    for batch_rows in _length_buckets(lengths, config.batch_size, rng):
        batch = rows[batch_rows]
        batch = torch.from_numpy(batch[:, -int((batch > 0).sum(axis=1).max()) :])
        inputs, targets = batch[:, :-1], batch[:, 1:]
        # Most sequences are far shorter than the window: score only real next items, not padding.
        real = targets > 0
        logits = model.hidden(inputs)[real] @ model.item_matrix().T
        loss = nn.functional.cross_entropy(logits, targets[real])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return float(np.mean(losses)) if losses else 0.0


def _length_buckets(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Batches of similar length (each is cut to its longest sequence), in random order."""
    order = np.lexsort((rng.random(len(lengths)), lengths))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def validation_ndcg(retriever: SequenceRetriever, cases: list[tuple[list[str], str]]) -> float:
    if not cases:
        return 0.0
    scores = retriever.score_matrix([h for h, _ in cases])
    total = 0.0
    for row, (history, target) in zip(scores, cases):
        row = row.copy()
        row[[retriever.row[i] - 1 for i in history if i in retriever.row]] = -np.inf
        rank = 1 + int(np.sum(row > row[retriever.row[target] - 1]))
        if rank <= 10:
            total += 1.0 / math.log2(rank + 1)
    return total / len(cases)
