"""Item embeddings from the sentence-transformers encoder, cached on disk per catalog."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from whyrec.core.catalog import Item


def load_encoder(path: str, device: str = "cpu"):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device=device)


def embed_items(encoder, items: list[Item], cache_file: Path | None = None, show_progress: bool = True) -> np.ndarray:
    """L2-normalised float32 vectors, one row per item, in the order given."""
    if cache_file is not None and cache_file.exists():
        vectors = np.load(cache_file)
        if vectors.shape[0] == len(items):
            return vectors
    vectors = encoder.encode(
        [item.text() for item in items],
        batch_size=64,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=show_progress and len(items) > 256,
    ).astype(np.float32)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".npy", dir=cache_file.parent)
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, vectors)
        os.replace(tmp, cache_file)
    return vectors
