import pytest


@pytest.mark.integration
def test_an_item_marked_not_interested_is_absent_from_the_next_slate(slice_recommender, slice_catalog):
    user = slice_catalog.users[3]
    first = [i.item_id for i in slice_recommender.recommend(user, 3).items]
    second = [i.item_id for i in slice_recommender.recommend(user, 3, not_interested=frozenset({first[0]})).items]
    assert first[0] not in second and len(second) == 3
    assert first[1] in second  # only the refused item leaves


@pytest.mark.integration
def test_every_recommended_item_carries_attributions_to_its_history(slice_recommender, slice_catalog):
    user = slice_catalog.users[5]
    history = set(slice_catalog.sequence(user))
    for entry in slice_recommender.recommend(user, 3).items:
        assert entry.ranked.attributions
        assert {a.history_item_id for a in entry.ranked.attributions} <= history
