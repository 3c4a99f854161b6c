import numpy as np

from whyrec.offline.evaluation import evaluate, rank_in
from whyrec.retrieval.cooccurrence import CooccurrenceRetriever


def test_rank_skips_excluded_items_and_counts_ties_half():
    scores = np.array([0.9, 0.8, 0.5, 0.5, 0.1])
    assert rank_in(scores, target=2, excluded=[0]) == 2.5  # above: item 1; tied: item 3
    assert rank_in(scores, target=4, excluded=[0, 1]) == 3


def test_cooccurrence_proposes_what_others_took_up_next_and_names_the_history_item():
    co = CooccurrenceRetriever([["kettle", "dripper"], ["kettle", "dripper"], ["kettle", "mug"], ["lamp", "pen"]])
    found = co.candidates(["lamp", "kettle"], 3)
    # dripper: 2 / sqrt(3 * 2) from the latest item; pen: 0.8 (one step older) * 1 / sqrt(1 * 1); mug: 1 / sqrt(3 * 1)
    assert [c.item_id for c in found] == ["dripper", "pen", "mug"]
    assert [c.matched_history for c in found] == [("kettle",), ("lamp",), ("kettle",)]


def test_cooccurrence_never_proposes_history_or_excluded_items():
    co = CooccurrenceRetriever([["a", "b", "c"], ["a", "c"]])
    assert [c.item_id for c in co.candidates(["a"], 5, exclude={"c"})] == ["b"]


def test_eval_reports_every_method_on_one_protocol(slice_catalog, slice_retriever, slice_ranker):
    report = evaluate(slice_catalog, slice_retriever, slice_ranker, rerank=20, users=15, seed=1)
    assert report["users"] == 15 and "leave-one-out" in report["protocol"]
    assert set(report["methods"]) >= {"whyrec", "popularity", "embedding", "cooccurrence", "sequence_model", "fused_retrieval"}
    for metrics in report["methods"].values():
        assert set(metrics) == {"ndcg@10", "recall@10", "recall@50", "mrr"}
        assert all(0.0 <= v <= 1.0 for v in metrics.values())
        assert metrics["recall@10"] <= metrics["recall@50"]
    assert set(report["candidates"]) >= {"recall@50", "recall@100"}
    assert 0.0 < report["diversity"]["catalog_coverage@10"] <= 1.0


def test_eval_sample_is_fixed_by_its_seed(slice_catalog, slice_retriever, slice_ranker):
    a = evaluate(slice_catalog, slice_retriever, slice_ranker, rerank=10, users=10, seed=3)
    b = evaluate(slice_catalog, slice_retriever, slice_ranker, rerank=10, users=10, seed=3)
    assert a == b


def test_a_diversified_slate_is_less_alike_than_the_ranker_order(slice_catalog, slice_retriever, slice_ranker):
    plain = evaluate(slice_catalog, slice_retriever, slice_ranker, rerank=20, users=15, seed=1)
    diverse = evaluate(slice_catalog, slice_retriever, slice_ranker, rerank=20, users=15, seed=1, diversity=0.7)
    assert diverse["diversity"]["intra_list_diversity@10"] > plain["diversity"]["intra_list_diversity@10"]
