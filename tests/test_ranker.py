from pathlib import Path

import numpy as np

from whyrec.ranker import CrossEncoderRanker
from whyrec.ranker.model import CHECKPOINT_META


def test_training_reports_validation_ndcg_per_epoch_and_saves_the_best(slice_training):
    report = slice_training.ranker
    assert 1 <= len(report.epochs) <= 2
    assert all(0.0 <= e.val_ndcg10 <= 1.0 for e in report.epochs)
    assert report.best_val_ndcg10 == max(report.baseline_val_ndcg10, *(e.val_ndcg10 for e in report.epochs))
    assert (Path(report.checkpoint) / CHECKPOINT_META).exists()


def test_the_retrieval_order_checkpoint_scores_candidates_as_retrieval_does(slice_catalog, slice_retriever, slice_training, tmp_path):
    import torch

    from whyrec.ranker.model import FEATURE_SCALE
    from whyrec.ranker.train import _save_retrieval_order

    trained = CrossEncoderRanker.load(Path(slice_training.ranker.checkpoint))
    model = trained.model
    with torch.no_grad():
        model.classifier.weight.fill_(0.01)  # a live text head, whatever the slice training kept
    fresh = CrossEncoderRanker(model, trained.tokenizer, feature_names=trained.feature_names,
                               feature_weights=(slice_retriever.weights.vector() * FEATURE_SCALE).tolist())
    _save_retrieval_order(fresh, tmp_path / "epoch0", {"best_epoch": 0})
    kept = CrossEncoderRanker.load(tmp_path / "epoch0")
    # Served, it skips the encoder whose reading the zero head would multiply away, and scores the same.
    served = CrossEncoderRanker.load(tmp_path / "epoch0").for_serving("int8")
    assert kept.reads_text and not served.reads_text
    for user in slice_catalog.users[:3]:
        history = slice_catalog.sequence(user)
        candidates = slice_retriever.candidates(history, 20)
        features = np.array([c.features for c in candidates], dtype=np.float32)
        args = ([slice_catalog.items[i] for i in history], [slice_catalog.items[c.item_id] for c in candidates], features)
        scores = kept.score(*args)
        assert np.allclose(scores, FEATURE_SCALE * np.array([c.score for c in candidates]), atol=0.05)
        assert np.allclose(served.score(*args), scores, atol=1e-4)
    assert bool((fresh.model.classifier.weight == 0.01).all())  # the live ranker's head is left as it was


def test_a_saved_checkpoint_is_reused_not_retrained(slice_settings, slice_catalog, slice_training):
    from whyrec.pipeline import load_models

    meta = Path(slice_training.ranker.checkpoint) / CHECKPOINT_META
    before = meta.stat().st_mtime_ns
    load_models(slice_settings.model_copy(update={"auto_train": False}), slice_catalog)
    assert meta.stat().st_mtime_ns == before


def test_checkpoint_scores_match_the_trained_model(slice_training, slice_catalog):
    first = CrossEncoderRanker.load(Path(slice_training.ranker.checkpoint))
    reloaded = CrossEncoderRanker.load(Path(slice_training.ranker.checkpoint))
    items = list(slice_catalog.items.values())
    retrieval = np.array([[0.9, 1.0, 2.0], [0.7, 0.0, 1.5], [0.5, 0.0, 1.0], [0.3, 2.0, 0.5], [0.1, 0.0, 0.0]])
    a = first.score(items[:3], items[3:8], retrieval)
    b = reloaded.score(items[:3], items[3:8], retrieval)
    assert abs(a - b).max() < 1e-5


def test_the_int8_serving_ranker_keeps_the_full_precision_order(slice_training, slice_catalog, slice_retriever, slice_ranker):
    full = CrossEncoderRanker.load(Path(slice_training.ranker.checkpoint)).for_serving("fp32")
    assert slice_ranker.int8  # what the service loads on a CPU by default
    agree, compared = 0, 0
    for user in slice_catalog.users[:20]:
        history = [slice_catalog.items[i] for i in slice_catalog.sequence(user)]
        candidates = slice_retriever.candidates(slice_catalog.sequence(user), 20)
        features = np.array([c.features for c in candidates], dtype=np.float32)
        docs = [slice_catalog.items[c.item_id] for c in candidates]
        exact, fast = full.score(history, docs, features), slice_ranker.score(history, docs, features)
        assert abs(exact - fast).max() < 0.15
        agree += int(np.argmax(exact) == np.argmax(fast))
        compared += 1
    assert agree >= compared - 2  # the top pick moves only on near ties


def test_an_int8_ranker_refuses_to_be_saved_or_fine_tuned(slice_training, slice_catalog, slice_retriever, tmp_path):
    import pytest

    from whyrec.ranker.feedback import train_on_feedback

    ranker = CrossEncoderRanker.load(Path(slice_training.ranker.checkpoint)).for_serving("int8")
    with pytest.raises(ValueError, match="cannot be saved"):
        ranker.save(tmp_path / "ranker", {})
    with pytest.raises(ValueError, match="cannot be fine-tuned"):
        train_on_feedback(ranker, slice_catalog, [], slice_retriever, None)
    assert not (tmp_path / "ranker").exists()


def _ranked_for(user, catalog, retriever, ranker, k=3):
    history = catalog.sequence(user)
    candidates = retriever.candidates(history, 20)
    return history, ranker.rank([catalog.items[i] for i in history], candidates, catalog.items, attribute=k, source=retriever)


def test_rank_sorts_by_ranker_score_and_attributes_the_top_items(slice_catalog, slice_retriever, slice_ranker):
    _, ranked = _ranked_for(slice_catalog.users[2], slice_catalog, slice_retriever, slice_ranker)
    assert [r.rank for r in ranked] == list(range(1, len(ranked) + 1))
    scores = [r.ranker_score for r in ranked]
    assert scores == sorted(scores, reverse=True)
    assert all(r.attributions for r in ranked[:3]) and not ranked[3].attributions


def test_removing_the_top_attributed_history_item_lowers_the_items_score(slice_catalog, slice_retriever, slice_ranker):
    checked = 0
    for user in slice_catalog.users[:10]:
        history, ranked = _ranked_for(user, slice_catalog, slice_retriever, slice_ranker, k=1)
        top = ranked[0]
        best = top.top_attribution
        if len(history) < 2 or best.contribution < 0.1:  # too small to tell from int8 noise
            continue
        item = slice_catalog.items[top.item_id]
        kept = [i for i in history if i != best.history_item_id]
        features = slice_retriever.features([history, kept], [top.item_id, top.item_id])
        full = slice_ranker.score([slice_catalog.items[i] for i in history], [item], features[:1])[0]
        without = slice_ranker.score([slice_catalog.items[i] for i in kept], [item], features[1:])[0]
        assert without < full
        assert abs((full - without) - best.contribution) < 0.1  # the attribution is that drop
        checked += 1
    assert checked >= 5


def test_a_training_deadline_stops_the_ranker_epochs_in_time_and_keeps_the_best_checkpoint(slice_settings, slice_catalog, slice_retriever, tmp_path):
    import time

    from whyrec.core.split import leave_one_out
    from whyrec.pipeline import models
    from whyrec.ranker import TrainConfig, train_ranker
    from whyrec.ranker.model import FEATURE_SCALE

    ranker = CrossEncoderRanker.from_base(
        models.encoder_path(slice_settings), feature_names=slice_retriever.feature_names,
        feature_weights=(slice_retriever.weights.vector() * FEATURE_SCALE).tolist(),
    )
    deadline = time.time() + 25
    # Without the deadline this would run 20 epochs: patience never ends it.
    config = TrainConfig(epochs=20, patience=20, deadline=deadline)
    report = train_ranker(ranker, slice_catalog, leave_one_out(slice_catalog).valid, slice_retriever, tmp_path / "ranker", config, log=lambda m: None)
    assert report.stopped_by_deadline and not report.stopped_early
    assert 1 <= len(report.epochs) < 20 and report.groups_trained > 0
    assert time.time() < deadline + 30  # validation and the checkpoint write may run a little past it
    assert (tmp_path / "ranker" / CHECKPOINT_META).exists()
