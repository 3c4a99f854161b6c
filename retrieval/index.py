"""A FAISS inner-product index over normalised item vectors, addressed by item id."""

from __future__ import annotations

import json
import os
from pathlib import Path

import faiss
import numpy as np

from whyrec.errors import ConfigError


class ItemIndex:
    def __init__(self, item_ids: list[str], vectors: np.ndarray):
        if len(item_ids) != vectors.shape[0]:
            raise ValueError(f"{len(item_ids)} ids for {vectors.shape[0]} vectors")
        self.item_ids = list(item_ids)
        self.position = {item_id: i for i, item_id in enumerate(self.item_ids)}
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        # Exact search: a few thousand items take well under a millisecond per query.
        self.index = faiss.IndexFlatIP(self.vectors.shape[1])
        self.index.add(self.vectors)

    def __len__(self) -> int:
        return len(self.item_ids)

    def vector(self, item_id: str) -> np.ndarray:
        return self.vectors[self.position[item_id]]

    def search(self, query: np.ndarray, n: int, exclude: set[str] = frozenset()) -> list[tuple[str, float]]:
        """The n best items for one query vector, skipping `exclude`."""
        k = min(len(self.item_ids), n + len(exclude))
        scores, positions = self.index.search(np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32), k)
        found = []
        for score, pos in zip(scores[0], positions[0]):
            if pos < 0:
                continue
            item_id = self.item_ids[pos]
            if item_id in exclude:
                continue
            found.append((item_id, float(score)))
            if len(found) == n:
                break
        return found

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "index.faiss.tmp"
        faiss.write_index(self.index, str(tmp))
        os.replace(tmp, folder / "index.faiss")
        (folder / "item_ids.json.tmp").write_text(json.dumps(self.item_ids))
        os.replace(folder / "item_ids.json.tmp", folder / "item_ids.json")

    @classmethod
    def load(cls, folder: Path) -> "ItemIndex":
        index_file, ids_file = folder / "index.faiss", folder / "item_ids.json"
        try:
            index = faiss.read_index(str(index_file))
            item_ids = json.loads(ids_file.read_text())
        except (RuntimeError, OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the item index at {folder} ({exc}); delete that folder to rebuild it") from None
        vectors = index.reconstruct_n(0, index.ntotal)
        return cls(item_ids, vectors)
