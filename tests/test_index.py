"""ItemIndex: the kinds it chooses, search, in-place add/remove, batch search, and files."""

import numpy as np
import pytest

from whyrec.retrieval import index as index_module
from whyrec.retrieval.index import ItemIndex

KINDS = ["flat", "ivf", "hnsw"]
DIM = 32


def clustered(n: int, dim: int = DIM, centres: int = 100, noise: float = 1.0, seed: int = 0) -> np.ndarray:
    """Random unit vectors around random centres: neighbourhoods like those of item embeddings."""
    rng = np.random.default_rng(seed)
    points = rng.standard_normal((centres, dim))[rng.integers(centres, size=n)] + noise * rng.standard_normal((n, dim))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def ids(n: int, prefix: str = "item") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


@pytest.fixture
def catalog():
    vectors = clustered(1500)
    return ids(1500), vectors


def hit_ids(hits) -> list[str]:
    return [item_id for item_id, _ in hits]


# -- choosing a kind -----------------------------------------------------------------------------------------


def test_auto_uses_exact_search_below_the_threshold():
    assert ItemIndex(ids(99), clustered(99), kind="auto", exact_below=100).kind == "flat"


def test_auto_uses_ivf_from_the_threshold_up():
    assert ItemIndex(ids(100), clustered(100), kind="auto", exact_below=100).kind == "ivf"


def test_auto_is_the_default_and_the_default_threshold_keeps_a_catalog_exact():
    assert ItemIndex(ids(2400), clustered(2400)).kind == "flat"


def test_an_explicit_kind_overrides_the_size_rule():
    assert ItemIndex(ids(50), clustered(50), kind="hnsw").kind == "hnsw"


def test_an_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="unknown index kind 'annoy'"):
        ItemIndex(ids(10), clustered(10), kind="annoy")


# -- searching -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_finds_an_items_own_vector_first(kind, catalog):
    item_ids, vectors = catalog
    index = ItemIndex(item_ids, vectors, kind=kind)
    for row in range(0, 1500, 97):
        assert index.search(vectors[row], 1)[0][0] == item_ids[row]


def test_vectors_are_normalised_so_scores_are_cosines():
    vectors = clustered(20) * np.arange(1, 21, dtype=np.float32)[:, None]
    index = ItemIndex(ids(20), vectors)
    assert np.allclose(np.linalg.norm(index.vectors, axis=1), 1.0, atol=1e-5)
    assert index.search(vectors[19], 1)[0][1] == pytest.approx(20.0, abs=1e-3)  # query unscaled, item unit length


@pytest.mark.parametrize("kind", KINDS)
def test_search_skips_excluded_items_and_still_returns_n(kind, catalog):
    item_ids, vectors = catalog
    index = ItemIndex(item_ids, vectors, kind=kind)
    best = hit_ids(index.search(vectors[0], 10))
    found = hit_ids(index.search(vectors[0], 10, exclude=set(best[:5])))
    assert len(found) == 10 and not set(found) & set(best[:5])


@pytest.mark.parametrize("kind", KINDS)
def test_search_batch_answers_like_one_search_per_query(kind, catalog):
    item_ids, vectors = catalog
    index = ItemIndex(item_ids, vectors, kind=kind)
    queries = clustered(8, seed=1)
    excludes = [set(item_ids[i : i + 3]) for i in range(8)]
    assert index.search_batch(queries, 7, excludes) == [index.search(q, 7, e) for q, e in zip(queries, excludes)]


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_kinds_recall_at_least_90_percent_of_exact_top_50(kind):
    vectors = clustered(5200, dim=64)
    item_ids, queries = ids(5000), vectors[5000:]
    exact = ItemIndex(item_ids, vectors[:5000], kind="flat").search_batch(queries, 50)
    approx = ItemIndex(item_ids, vectors[:5000], kind=kind).search_batch(queries, 50)
    recall = np.mean([len(set(hit_ids(a)) & set(hit_ids(e))) / 50 for a, e in zip(approx, exact)])
    assert recall >= 0.9


def test_hnsw_searches_deeper_than_its_ef_search_stay_accurate():
    vectors = clustered(5020, dim=128, noise=2.0)  # loosely clustered: a shallow search misses neighbours
    item_ids, queries = ids(5000), vectors[5000:5020]
    deep = index_module.HNSW_EF_SEARCH * 3
    exact = ItemIndex(item_ids, vectors[:5000], kind="flat").search_batch(queries, deep)
    approx = ItemIndex(item_ids, vectors[:5000], kind="hnsw").search_batch(queries, deep)
    recall = np.mean([len(set(hit_ids(a)) & set(hit_ids(e))) / deep for a, e in zip(approx, exact)])
    assert recall >= 0.98  # exploring only efSearch candidates gives ~0.92 here


def test_asking_for_cuda_without_a_faiss_gpu_build_searches_on_the_cpu(catalog, monkeypatch):
    monkeypatch.setattr(index_module, "gpu_available", lambda: False)
    item_ids, vectors = catalog
    on_cpu, asked_cuda = ItemIndex(item_ids, vectors, kind="flat"), ItemIndex(item_ids, vectors, kind="flat", device="cuda")
    assert asked_cuda.search(vectors[3], 5) == on_cpu.search(vectors[3], 5)


# -- adding and removing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_an_added_item_is_found_by_search(kind, catalog):
    item_ids, vectors = catalog
    index = ItemIndex(item_ids, vectors, kind=kind)
    new = clustered(3, seed=7)
    index.add(["new0", "new1", "new2"], new)
    assert len(index) == 1503 and index.item_ids[-3:] == ["new0", "new1", "new2"]
    assert [index.search(v, 1)[0][0] for v in new] == ["new0", "new1", "new2"]
    assert np.allclose(index.vector("new1"), new[1], atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_adding_an_existing_id_replaces_its_vector(kind, catalog):
    item_ids, vectors = catalog
    index = ItemIndex(item_ids, vectors, kind=kind)
    moved = clustered(1, seed=9)[0]
    index.add(["item4"], moved[None, :])
    assert len(index) == 1500
    assert np.allclose(index.vector("item4"), moved, atol=1e-6)
    assert index.search(moved, 1)[0][0] == "item4"
    assert "item4" not in hit_ids(index.search(vectors[4], 5))  # its old vector is gone
    assert hit_ids(index.search(moved, 1500)).count("item4") == 1


@pytest.mark.parametrize("kind", KINDS)
def test_a_removed_item_is_never_returned(kind, catalog):
    item_ids, vectors = catalog
    index = ItemIndex(item_ids, vectors, kind=kind)
    gone = item_ids[10:20]
    index.remove(gone)
    assert len(index) == 1490 and not set(gone) & set(index.item_ids) and not set(gone) & set(index.position)
    assert len(index.search(vectors[10], 10)) == 10  # the removed nearest items do not use up the n
    for row in range(10, 20):
        assert not set(gone) & set(hit_ids(index.search(vectors[row], 1490)))
    assert not set(gone) & {i for hits in index.search_batch(vectors[10:20], 50) for i, _ in hits}
    with pytest.raises(KeyError):
        index.vector("item10")


@pytest.mark.parametrize("kind", KINDS)
def test_after_add_and_remove_rows_ids_and_positions_stay_aligned(kind, catalog):
    item_ids, vectors = catalog
    index = ItemIndex(item_ids, vectors, kind=kind)
    index.remove(item_ids[::7])
    index.add(["late0", "late1"], clustered(2, seed=3))
    index.remove(["late0", item_ids[1]])
    expected = {i: vectors[r] for r, i in enumerate(item_ids) if r % 7 and r != 1}
    assert sorted(index.item_ids) == sorted([*expected, "late1"])
    assert all(index.position[i] == row for row, i in enumerate(index.item_ids))
    assert index.vectors.shape == (len(index), DIM)
    assert all(np.allclose(index.vectors[index.position[i]], v, atol=1e-6) for i, v in expected.items())


def test_removing_an_unknown_id_raises_key_error_and_removes_nothing(catalog):
    index = ItemIndex(*catalog)
    with pytest.raises(KeyError, match="not in the index: 'nope'"):
        index.remove(["item1", "nope"])
    assert len(index) == 1500 and "item1" in index.position


def test_adding_vectors_of_another_dimension_names_both_dimensions(catalog):
    index = ItemIndex(*catalog)
    with pytest.raises(ValueError, match=f"dimension 16, the index has dimension {DIM}"):
        index.add(["odd"], np.ones((1, 16), dtype=np.float32))


def test_hnsw_keeps_a_few_removed_items_as_tombstones(catalog):
    index = ItemIndex(*catalog, kind="hnsw")
    index.remove(["item1", "item2"])
    assert index.tombstones == 2 and index.index.ntotal == 1500


def test_hnsw_rebuilds_once_tombstones_pass_the_threshold(catalog):
    item_ids, vectors = catalog
    index = ItemIndex(item_ids, vectors, kind="hnsw")
    index.remove(item_ids[: int(1500 * index_module.TOMBSTONE_COMPACT_FRACTION) + 1])
    assert index.tombstones == 0 and index.index.ntotal == len(index)
    assert index.search(vectors[-1], 1)[0][0] == item_ids[-1]


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_flat_and_ivf_delete_for_real(kind, catalog):
    index = ItemIndex(*catalog, kind=kind)
    index.remove(["item1", "item2"])
    assert index.tombstones == 0 and index.index.ntotal == 1498
