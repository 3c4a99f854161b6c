"""A FAISS inner-product index over normalised item vectors, addressed by item id.

Three kinds of index, one API:

* ``flat``: exact search (``IndexIDMap(IndexFlatIP)``).
* ``ivf``:  inverted lists (``IndexIVFFlat``, k-means cells, ``IVF_NPROBE`` cells searched per query).
* ``hnsw``: a navigable small-world graph (``IndexHNSWFlat``).

``kind="auto"`` (the default) takes exact search below ``EXACT_BELOW`` items and IVF above.
IVF rather than HNSW because, measured on one CPU thread (bench/retrieval_latency.py, results in
bench/results/retrieval_latency.md; 100k items: 384-d clustered synthetic vectors), IVF reached a higher
recall@50 at a lower latency (IVF 1.000 at p50 0.35 ms, HNSW M=32/efSearch 128 0.967 at 0.50 ms and
only 0.976 at efSearch 256), built faster (14 s vs 24 s; k-means on a subsample instead of a graph
insert per item, so 1M items take ~3 min where HNSW would take far longer), deletes items for real (HNSW
can only tombstone them) and runs on a GPU (faiss has no GPU HNSW). IVF's recall depends on the data
having cluster structure, as a catalog's sentence embeddings do; on unstructured vectors raise
``IVF_NPROBE`` or use ``kind="hnsw"``.

Scores are inner products with the stored vectors, which are L2-normalised on the way in (cosine).

Items are added and removed in place (``add``/``remove``: the live catalog changes of the service);
the index is not saved, since a served process builds it from the cached item embeddings and
replays the recorded changes. ``item_ids``, ``position`` and ``vectors``
always describe the live items, row for row. Removal moves the last rows into the freed ones, so the
order of ``item_ids`` is not stable across ``remove``. Inside faiss every vector carries an int64
*label*; labels are never reused, and ``_row_of`` maps a label to its row (-1 once removed or
replaced). HNSW cannot delete, so its removed labels stay in the graph as tombstones that searches
filter out (an ``IDSelectorBitmap`` over live labels); the graph is rebuilt once tombstones exceed
``TOMBSTONE_COMPACT_FRACTION`` of it.

GPU: with a GPU build of faiss and ``device`` "cuda" or "auto", flat and IVF searches run on a GPU copy
of the index. The CPU index stays the master copy: faiss GPU indexes cannot remove ids, so ``add`` and
``remove`` change the CPU index and drop the GPU copy, which the next search copies over again. With faiss-cpu "cuda" and
"auto" mean CPU, so the pipeline may pass its torch device through unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import faiss
import numpy as np


KINDS = ("flat", "ivf", "hnsw")
DEVICES = ("cpu", "cuda", "auto")

# Exact search below this many items: one flat query costs ~3 ms at 50k items on one core (6.6 ms
# measured at 100k, 87 ms at 1M), still acceptable, and exact results need no tuning.
EXACT_BELOW = 50_000

# IVF: nlist = IVF_LISTS_PER_SQRT_N * sqrt(n) cells (faiss suggests 4-16 sqrt(n)), capped so each
# cell has >= 39 training points; k-means trains on at most IVF_TRAIN_POINTS_PER_LIST points per
# cell (a subsample: 1M items -> 4,000 cells trained on 256k points). IVF_NPROBE=32: the synthetic
# 100k/1M sets reach recall@50 0.997/1.000 already at nprobe 16, but the real 2.4k Office catalog
# needed more of its cells (0.986 at 16, 0.999 at 32), so 32 leaves a margin for real embeddings.
IVF_LISTS_PER_SQRT_N = 4
IVF_TRAIN_POINTS_PER_LIST = 64
IVF_NPROBE = 32

# HNSW (kind="hnsw" only): in a side sweep at 100k items M=16 stayed below recall@50 0.94 even at
# efSearch 256, while M=32 reached 0.97 at efSearch 128. A search for k > efSearch results explores k candidates.
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 40
HNSW_EF_SEARCH = 128
# Rebuild an HNSW graph once this fraction of its nodes are tombstones (removed or replaced items).
TOMBSTONE_COMPACT_FRACTION = 0.2

# faiss GPU indexes answer at most this many neighbours per query; deeper searches use the CPU index.
GPU_MAX_K = 2048

_FAISS_CLASS = {"flat": faiss.IndexIDMap, "ivf": faiss.IndexIVFFlat, "hnsw": faiss.IndexHNSWFlat}
_gpu_resources = None


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def choose_kind(n_items: int, kind: str = "auto", exact_below: int = EXACT_BELOW) -> str:
    """The index kind used for `n_items` items: `kind` itself, or for "auto" flat below `exact_below` and IVF above."""
    if kind == "auto":
        return "flat" if n_items < exact_below else "ivf"
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}: use one of auto, {', '.join(KINDS)}")
    return kind


def ivf_lists(n_items: int) -> int:
    return max(1, min(round(IVF_LISTS_PER_SQRT_N * math.sqrt(n_items)), n_items // 39))


class ItemIndex:
    def __init__(
        self,
        item_ids: Sequence[str],
        vectors: np.ndarray,
        kind: str = "auto",
        *,
        exact_below: int = EXACT_BELOW,
        device: str = "cpu",
    ):
        vectors = np.asarray(vectors)
        if vectors.ndim != 2:
            raise ValueError(f"vectors must be a matrix (items x dimension), got shape {vectors.shape}")
        item_ids = list(item_ids)
        _check_batch(item_ids, vectors)
        if device not in DEVICES:
            raise ValueError(f"unknown device {device!r}: use one of {', '.join(DEVICES)}")
        kind = choose_kind(len(item_ids), kind, exact_below)
        vectors = _normalised(vectors)
        labels = np.arange(len(item_ids), dtype=np.int64)
        self._setup(kind, device, item_ids, vectors, labels, _new_faiss_index(kind, vectors, labels))

    def _setup(self, kind: str, device: str, item_ids: list[str], vectors: np.ndarray, labels: np.ndarray, index) -> None:
        """Adopt `index` for the items: `vectors` holds them in its first rows, `labels` their faiss labels."""
        self.kind, self.device, self.dim = kind, device, vectors.shape[1]
        self.item_ids = item_ids
        self.position = {item_id: row for row, item_id in enumerate(item_ids)}
        self._vecs = vectors  # rows [0, len) are live; spare rows beyond are room for add()
        self._labels = labels  # faiss label of each row; may also have spare rows
        # Labels are never reused. HNSW labels are insertion numbers, so the next one is ntotal.
        self._next_label = int(index.ntotal) if kind == "hnsw" else int(labels.max(initial=-1)) + 1
        self._row_of = np.full(self._next_label, -1, dtype=np.int64)  # label -> row, -1 when not live
        self._row_of[labels[: len(item_ids)]] = np.arange(len(item_ids))
        self.index = index  # the CPU (master) faiss index
        self._on_gpu = kind != "hnsw" and device != "cpu" and gpu_available()
        self._gpu_index = None  # the GPU copy, made by the first search after each change
        self._live = None

    # -- reading ---------------------------------------------------------------------------------------------

    @property
    def vectors(self) -> np.ndarray:
        """The live vectors, one float32 row per entry of `item_ids`; a view: copy it to keep it across add/remove."""
        return self._vecs[: len(self.item_ids)]

    @property
    def tombstones(self) -> int:
        """Removed or replaced vectors still in the faiss index (HNSW only; flat and IVF delete for real)."""
        return self.index.ntotal - len(self.item_ids)

    def __len__(self) -> int:
        return len(self.item_ids)

    def vector(self, item_id: str) -> np.ndarray:
        return self._vecs[self.position[item_id]]

    def search(self, query: np.ndarray, n: int, exclude: Iterable[str] = frozenset()) -> list[tuple[str, float]]:
        """The n best items for one query vector, skipping `exclude`."""
        return self.search_batch(np.asarray(query).reshape(1, -1), n, [exclude])[0]

    def search_batch(
        self, queries: np.ndarray, n: int, excludes: Sequence[Iterable[str]] | None = None
    ) -> list[list[tuple[str, float]]]:
        """The n best items for each row of `queries` (one faiss call), skipping that row's `excludes` entry."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries have shape {queries.shape}, the index has dimension {self.dim}")
        excludes = [frozenset()] * len(queries) if excludes is None else [set(e) for e in excludes]
        if len(excludes) != len(queries):
            raise ValueError(f"{len(excludes)} exclude sets for {len(queries)} queries")
        k = min(len(self), n + max((len(e) for e in excludes), default=0))
        if k <= 0 or n <= 0:
            return [[] for _ in queries]
        scores, labels = self._faiss_search(queries, k)
        rows = np.where(labels >= 0, self._row_of[np.maximum(labels, 0)], -1)
        results = []
        for q_scores, q_rows, exclude in zip(scores, rows, excludes):
            found = []
            for score, row in zip(q_scores.tolist(), q_rows.tolist()):
                if row < 0:
                    continue
                item_id = self.item_ids[row]
                if item_id in exclude:
                    continue
                found.append((item_id, score))
                if len(found) == n:
                    break
            results.append(found)
        return results

    def _faiss_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.kind != "hnsw":
            return self._search_index(k).search(queries, k)
        params = faiss.SearchParametersHNSW()
        params.efSearch = max(self.index.hnsw.efSearch, k)  # faiss HNSW keeps only efSearch candidates, even if k is larger
        if self.tombstones:
            params.sel = self._live_selector()
        return self.index.search(queries, k, params=params)

    def _live_selector(self) -> faiss.IDSelector:
        """Selects the live HNSW labels, skipping tombstones (cached until the next add/remove)."""
        if self._live is None:
            bitmap = np.packbits(self._row_of[: self.index.ntotal] >= 0, bitorder="little")
            self._live = (faiss.IDSelectorBitmap(len(bitmap), faiss.swig_ptr(bitmap)), bitmap)  # the bitmap must outlive the selector
        return self._live[0]

    def _search_index(self, k: int):
        """The GPU copy of a flat or IVF index when asked for and available, else the CPU index."""
        if not self._on_gpu or k > GPU_MAX_K:
            return self.index
        if self._gpu_index is None:
            global _gpu_resources
            if _gpu_resources is None:
                _gpu_resources = faiss.StandardGpuResources()
            self._gpu_index = faiss.index_cpu_to_gpu(_gpu_resources, 0, self.index)
        return self._gpu_index

    # -- changing --------------------------------------------------------------------------------------------

    def add(self, item_ids: Sequence[str], vectors: np.ndarray) -> None:
        """Add items; an id already in the index gets the new vector (no rebuild either way)."""
        item_ids = list(item_ids)
        vectors = np.asarray(vectors)
        if vectors.ndim == 1:
            vectors = vectors.reshape(1, -1)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"vectors have dimension {vectors.shape[-1]}, the index has dimension {self.dim}")
        _check_batch(item_ids, vectors)
        if not item_ids:
            return
        vectors = _normalised(vectors)
        replaced = [self.position[i] for i in item_ids if i in self.position]
        if replaced:
            self._forget_labels(self._labels[replaced])
        new = [i for i in item_ids if i not in self.position]
        for row, item_id in enumerate(new, start=len(self.item_ids)):
            self.position[item_id] = row
        self.item_ids.extend(new)
        rows = np.array([self.position[i] for i in item_ids], dtype=np.int64)
        labels = np.arange(self._next_label, self._next_label + len(item_ids), dtype=np.int64)
        self._next_label += len(item_ids)
        self._vecs = _with_capacity(self._vecs, len(self.item_ids))
        self._labels = _with_capacity(self._labels, len(self.item_ids))
        self._row_of = _with_capacity(self._row_of, self._next_label, fill=-1)
        self._vecs[rows] = vectors
        self._labels[rows] = labels
        self._row_of[labels] = rows
        if self.kind == "hnsw":  # labels are insertion numbers, and _next_label tracks ntotal
            self.index.add(vectors)
        else:
            self.index.add_with_ids(vectors, labels)
        self._changed()

    def remove(self, item_ids: Iterable[str]) -> None:
        """Remove items by id; raises KeyError (and removes nothing) if any id is not in the index."""
        item_ids = list(dict.fromkeys(item_ids))
        unknown = [i for i in item_ids if i not in self.position]
        if unknown:
            shown = ", ".join(repr(i) for i in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            raise KeyError(f"cannot remove {len(unknown)} item(s) not in the index: {shown}")
        if not item_ids:
            return
        rows = np.array([self.position.pop(i) for i in item_ids], dtype=np.int64)
        self._forget_labels(self._labels[rows])
        # Fill the freed rows below the new end with the surviving rows above it.
        end = len(self.item_ids) - len(rows)
        freed = np.zeros(len(self.item_ids), dtype=bool)
        freed[rows] = True
        holes, movers = np.flatnonzero(freed[:end]), end + np.flatnonzero(~freed[end:])
        self._vecs[holes] = self._vecs[movers]
        self._labels[holes] = self._labels[movers]
        self._row_of[self._labels[holes]] = holes
        for hole, mover in zip(holes.tolist(), movers.tolist()):
            self.item_ids[hole] = self.item_ids[mover]
            self.position[self.item_ids[hole]] = hole
        del self.item_ids[end:]
        self._changed()

    def compact(self) -> None:
        """Rebuild the faiss index from the live vectors: drops HNSW tombstones (IVF keeps its trained cells)."""
        labels = np.arange(len(self), dtype=np.int64)
        if self.kind == "ivf":
            self.index.reset()
            self.index.add_with_ids(self.vectors, labels)
            index = self.index
        else:
            index = _new_faiss_index(self.kind, self.vectors, labels)
        self._setup(self.kind, self.device, self.item_ids, self._vecs, labels, index)

    def _forget_labels(self, labels: np.ndarray) -> None:
        self._row_of[labels] = -1
        if self.kind != "hnsw":
            self.index.remove_ids(labels)

    def _changed(self) -> None:
        self._gpu_index = None
        self._live = None
        if self.kind == "hnsw" and self.tombstones > TOMBSTONE_COMPACT_FRACTION * self.index.ntotal:
            self.compact()


def _new_faiss_index(kind: str, vectors: np.ndarray, labels: np.ndarray):
    dim = vectors.shape[1]
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
        index.add(vectors)  # labels are insertion numbers, here 0..n-1
        return index
    if kind == "ivf":
        if len(vectors) == 0:
            raise ValueError("an ivf index needs vectors to train its cells on; build it with at least one item")
        nlist = ivf_lists(len(vectors))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        sample_size = min(len(vectors), IVF_TRAIN_POINTS_PER_LIST * nlist)
        sample = vectors[np.random.default_rng(0).choice(len(vectors), sample_size, replace=False)]
        index.train(sample)
        index.nprobe = IVF_NPROBE
    else:
        index = faiss.IndexIDMap(faiss.IndexFlatIP(dim))
    index.add_with_ids(vectors, labels)
    return index


def _check_batch(item_ids: list[str], vectors: np.ndarray) -> None:
    if len(item_ids) != vectors.shape[0]:
        raise ValueError(f"{len(item_ids)} ids for {vectors.shape[0]} vectors")
    if len(set(item_ids)) != len(item_ids):
        seen: set[str] = set()
        duplicate = next(i for i in item_ids if i in seen or seen.add(i))
        raise ValueError(f"item id {duplicate!r} appears more than once")


def _normalised(vectors: np.ndarray) -> np.ndarray:
    """A float32 copy with unit-length rows (all-zero rows stay zero)."""
    vectors = np.array(vectors, dtype=np.float32, order="C")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    np.divide(vectors, norms, out=vectors, where=norms > 0)
    return vectors


def _with_capacity(array: np.ndarray, size: int, fill: int = 0) -> np.ndarray:
    """`array`, or a copy with room for at least `size` rows (grown by half, so repeated adds stay cheap)."""
    if len(array) >= size:
        return array
    grown = np.full((max(size, len(array) * 3 // 2 + 16), *array.shape[1:]), fill, dtype=array.dtype)
    grown[: len(array)] = array
    return grown
