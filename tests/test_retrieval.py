import numpy as np



def test_candidates_exclude_history_and_requested_items(slice_catalog, slice_retriever):
    user = slice_catalog.users[0]
    history = slice_catalog.sequence(user)
    blocked = {slice_retriever.candidates(history, 5)[0].item_id}
    found = slice_retriever.candidates(history, 20, exclude=blocked)
    ids = [c.item_id for c in found]
    assert len(ids) == 20 and not (set(ids) & (set(history) | blocked))


def test_candidates_are_sorted_by_score_and_name_history_items_they_matched(slice_catalog, slice_retriever):
    history = slice_catalog.sequence(slice_catalog.users[1])
    found = slice_retriever.candidates(history, 10)
    scores = [c.score for c in found]
    assert scores == sorted(scores, reverse=True)
    assert all(c.matched_history and set(c.matched_history) <= set(history) for c in found)


def test_the_nearest_item_to_a_single_history_item_is_its_nearest_neighbour(slice_catalog, slice_embedding):
    index = slice_embedding.index
    anchor = index.item_ids[0]
    sims = index.vectors @ index.vector(anchor)
    sims[index.position[anchor]] = -np.inf
    expected = index.item_ids[int(np.argmax(sims))]
    assert slice_embedding.candidates([anchor], 1)[0].item_id == expected


def test_a_refit_sequence_model_learns_the_transitions_it_is_given():
    from whyrec.retrieval.sequential import SequenceConfig, refit_sequence_model

    # Every sequence walks one hidden cycle over 30 items, so the next item is fixed by the last one.
    rng = np.random.default_rng(0)
    items = [f"i{k}" for k in range(30)]
    cycle = list(rng.permutation(30))
    sequences = []
    for _ in range(200):
        start = int(rng.integers(30))
        sequences.append([items[cycle[(start + s) % 30]] for s in range(6)])
    config = SequenceConfig(dim=32, dropout=0.1, lr=1e-2)
    model = refit_sequence_model(items, sequences, None, epochs=30, config=config)
    histories = [[items[cycle[k]], items[cycle[(k + 1) % 30]]] for k in range(30)]
    top = np.argmax(model.score_matrix(histories), axis=1)
    hits = sum(items[t] == items[cycle[(k + 2) % 30]] for k, t in enumerate(top))
    assert hits >= 27  # chance is 1 in 30
