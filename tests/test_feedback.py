from collections import Counter
from pathlib import Path

import pytest

from whyrec.core.schema import ShownSlate
from whyrec.ranker import CrossEncoderRanker
from whyrec.ranker.feedback import (
    FeedbackConfig,
    engaged_above_skipped,
    train_on_feedback,
)


def _slates(catalog, retriever, users, liked_category):
    """Slates of each shopper's top 10 candidates where the shopper engages with one category only."""
    slates = []
    for user in users:
        history = catalog.sequence(user)
        shown = [c.item_id for c in retriever.candidates(history, 10)]
        engaged = frozenset(i for i in shown if catalog.items[i].category == liked_category)
        if engaged and len(engaged) < len(shown):
            slates.append(ShownSlate(user, tuple(history), tuple(shown), engaged))
    return slates


@pytest.fixture(scope="module")
def liked_category(slice_catalog, slice_retriever):
    shown = [c.item_id for u in slice_catalog.users for c in slice_retriever.candidates(slice_catalog.sequence(u), 10)]
    return Counter(slice_catalog.items[i].category for i in shown).most_common(1)[0][0]


@pytest.fixture(scope="module")
def tuned(slice_catalog, slice_retriever, slice_training, liked_category, tmp_path_factory):
    """The session's ranker fine-tuned once on the first 60 shoppers' slates (the tests below read
    it: one training instead of one each), with the held-out shoppers' slates and the scores before."""
    ranker = CrossEncoderRanker.load(Path(slice_training.ranker.checkpoint))
    users = slice_catalog.users
    train, held_out = _slates(slice_catalog, slice_retriever, users[:60], liked_category), _slates(slice_catalog, slice_retriever, users[60:], liked_category)
    before = engaged_above_skipped(ranker, slice_catalog, held_out, slice_retriever)
    folder = tmp_path_factory.mktemp("feedback") / "ranker"
    report = train_on_feedback(ranker, slice_catalog, train, slice_retriever, folder, FeedbackConfig(epochs=3, learning_rate=1e-4))
    return ranker, folder, report, train, held_out, before


def test_feedback_moves_engaged_items_above_skipped_ones_for_other_shoppers(tuned, slice_catalog, slice_retriever):
    ranker, _, report, train, held_out, before = tuned
    assert len(train) >= 10 and len(held_out) >= 3
    after = engaged_above_skipped(ranker, slice_catalog, held_out, slice_retriever)
    assert report.groups >= len(train)
    assert after > before + 0.1 and after > 0.7


def test_feedback_saves_a_checkpoint_that_loads_with_the_new_scores(tuned, slice_catalog, slice_retriever, liked_category):
    ranker, folder, _, _, _, _ = tuned
    slates = _slates(slice_catalog, slice_retriever, slice_catalog.users[:20], liked_category)
    reloaded = CrossEncoderRanker.load(folder)
    assert engaged_above_skipped(reloaded, slice_catalog, slates, slice_retriever) == pytest.approx(
        engaged_above_skipped(ranker, slice_catalog, slates, slice_retriever), abs=0.05
    )


def test_feedback_naming_an_unknown_item_is_refused_before_any_training(slice_catalog, slice_retriever, slice_training, tmp_path):
    ranker = CrossEncoderRanker.load(Path(slice_training.ranker.checkpoint))
    user = slice_catalog.users[0]
    slate = ShownSlate(user, tuple(slice_catalog.sequence(user)), ("no-such-item", next(iter(slice_catalog.items))), frozenset({"no-such-item"}))
    with pytest.raises(ValueError, match="no-such-item"):
        train_on_feedback(ranker, slice_catalog, [slate], slice_retriever, tmp_path / "ranker")
    assert not (tmp_path / "ranker").exists()
