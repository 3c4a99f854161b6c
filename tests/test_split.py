from whyrec.core.catalog import Catalog, Interaction, Item
from whyrec.core.split import leave_one_out


def _catalog(sequences):
    items = {i: Item(i, f"item {i}") for seq in sequences.values() for i in seq}
    events = [Interaction(u, i) for u, seq in sequences.items() for i in seq]
    return Catalog("t", items, events)


def test_last_item_is_test_and_second_last_is_validation():
    split = leave_one_out(_catalog({"u": ["a", "b", "c", "d"]}))
    assert split.train["u"] == ["a", "b"]
    assert (split.valid[0].history, split.valid[0].target) == (["a", "b"], "c")
    assert (split.test[0].history, split.test[0].target) == (["a", "b", "c"], "d")


def test_short_sequences_go_to_train_only():
    split = leave_one_out(_catalog({"u": ["a", "b"]}))
    assert split.train == {"u": ["a", "b"]} and split.valid == [] and split.test == []
