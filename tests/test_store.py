"""The impression log and feedback store on a real SQLite file."""

from datetime import datetime, timedelta, timezone

import pytest

from whyrec.core.catalog import EventKind
from whyrec.core.schema import (
    Attempt,
    Attribution,
    Explanation,
    ExplanationSource,
    Fact,
    FactKind,
    FactTable,
    RankedItem,
    RecommendedItem,
)
from whyrec.service.store import FeedbackKind, Store, UnknownImpression


def _entry(item_id: str, text: str) -> RecommendedItem:
    facts = (
        Fact("F1", FactKind.ITEM_TITLE, f'The recommended item is "Item {item_id}".', f"Item {item_id}"),
        Fact("F2", FactKind.HISTORY_ITEM, 'You bought "Stapler".', "Stapler", history_item_id="h1", event=EventKind.PURCHASE, position=1),
    )
    ranked = RankedItem(item_id, 1, 0.5, 2.25, ("h1",), (Attribution("h1", 0.75, 4),), 20, (0.1, 0.2, 0.3))
    explanation = Explanation(text, ExplanationSource.LLM, True, facts[1:], "shopper.v1", "smollm2", (Attempt("raw " + text, text, True, "ok"),))
    return RecommendedItem(item_id, f"Item {item_id}", ranked, explanation, FactTable("u1", item_id, facts))


@pytest.fixture
def store(tmp_path):
    return Store(f"sqlite:///{tmp_path / 'sub' / 'whyrec.sqlite3'}")


def test_the_schema_is_created_on_start_in_a_new_folder(tmp_path):
    path = tmp_path / "new" / "folder" / "store.sqlite3"
    Store(f"sqlite:///{path}").ping()
    assert path.exists()


def test_a_logged_slate_reads_back_exactly_as_served(store):
    prompt = [("system", "You write the note."), ("human", "Facts:\n[F1] ...")]
    logged = store.log_impression("u1", "slate", ["h0", "h1"], [_entry("a", "Because you bought Stapler.")], [prompt], ("embedding", "cooccurrence", "sequence"))
    record = store.impression(logged.impression_id)
    item = record.items[0]
    assert (record.user_id, record.kind, record.history) == ("u1", "slate", ["h0", "h1"])
    assert item.text == "Because you bought Stapler." and item.grounded and item.source == "llm"
    assert [f.id for f in item.fact_table] == ["F1", "F2"] and item.cited_fact_ids == ["F2"]
    assert [(m.role, m.content) for m in item.prompt] == prompt
    assert (item.prompt_version, item.model) == ("shopper.v1", "smollm2")
    assert item.features == {"embedding": 0.1, "cooccurrence": 0.2, "sequence": 0.3}
    assert item.attributions[0].rank_without == 4 and item.attempts[0].raw_output == "raw Because you bought Stapler."


def test_impressions_filter_by_item_and_time(store):
    old = store.log_impression("u1", "slate", ["h1"], [_entry("a", "old")], [[]], (), served_at=datetime(2026, 11, 24, 10, tzinfo=timezone.utc))
    new = store.log_impression("u1", "slate", ["h1"], [_entry("b", "new")], [[]], ())
    assert [r.impression_id for r in store.impressions(user_id="u1")] == [new.impression_id, old.impression_id]
    assert [r.impression_id for r in store.impressions(user_id="u1", item_id="a")] == [old.impression_id]
    tuesday_evening = datetime(2026, 11, 24, 18, tzinfo=timezone.utc)
    assert [r.impression_id for r in store.impressions(user_id="u1", until=tuesday_evening)] == [old.impression_id]
    assert store.impressions(user_id="u1", since=tuesday_evening + timedelta(hours=1))[0].impression_id == new.impression_id


def test_a_failed_write_leaves_nothing_behind(store):
    with pytest.raises(ValueError):
        store.log_impression("u1", "slate", [], [_entry("a", "x"), _entry("b", "y")], [[]], ())
    assert store.impressions(user_id="u1") == []


def test_feedback_on_an_unknown_impression_is_refused_and_not_written(store):
    with pytest.raises(UnknownImpression, match="nope"):
        store.add_feedback("u1", FeedbackKind.HELPFUL, "a", impression_id="nope")
    assert store.feedback("u1") == []


def test_events_and_standing_feedback_become_the_shoppers_overlay(store):
    store.add_event("u1", "x", EventKind.CART)
    store.add_event("u1", "y", EventKind.PURCHASE)
    store.add_event("u2", "z", EventKind.VIEW)
    store.add_feedback("u1", FeedbackKind.NOT_INTERESTED, "n")
    store.add_feedback("u1", FeedbackKind.EXCLUDE_PURCHASE, "p")
    overlay = store.overlay("u1")
    assert [(e.item_id, e.kind) for e in overlay.events] == [("x", EventKind.CART), ("y", EventKind.PURCHASE)]
    assert overlay.not_interested == {"n"} and overlay.excluded_history == {"p"}


def test_the_store_survives_a_restart(tmp_path):
    url = f"sqlite:///{tmp_path / 'whyrec.sqlite3'}"
    logged = Store(url).log_impression("u1", "slate", ["h1"], [_entry("a", "kept")], [[]], ())
    assert Store(url).impression(logged.impression_id).items[0].text == "kept"


def test_shown_slates_pair_each_settled_slate_with_the_shown_items_then_engaged_with(store):
    now = datetime.now(timezone.utc)
    store.log_impression("u1", "slate", ["h1"], [_entry("a", "x"), _entry("b", "y"), _entry("c", "z")], [[], [], []], (), served_at=now - timedelta(hours=2))
    store.log_impression("u1", "slate", ["h1"], [_entry("d", "w")], [[]], (), served_at=now - timedelta(minutes=30))  # still in its window
    store.log_impression("u1", "explain", ["h1"], [_entry("e", "v")], [[]], (), served_at=now - timedelta(hours=2))  # not a slate
    store.add_event("u1", "a", EventKind.CLICK)
    store.add_event("u1", "c", EventKind.PURCHASE)
    store.add_event("u1", "b", EventKind.VIEW)  # a view is not engagement
    store.add_event("u1", "z", EventKind.CART)  # not shown
    store.add_event("u2", "b", EventKind.CLICK)  # another shopper
    slates = store.shown_slates(window=timedelta(hours=3), now=now + timedelta(hours=1, minutes=30))
    assert [(s.user_id, s.history, s.shown) for s in slates] == [("u1", ("h1",), ("a", "b", "c"))]
    assert slates[0].engaged == {"a", "c"}


def test_engagement_after_the_window_closed_does_not_count(store):
    now = datetime.now(timezone.utc)
    store.log_impression("u1", "slate", ["h1"], [_entry("a", "x"), _entry("b", "y")], [[], []], (), served_at=now - timedelta(hours=5))
    store.add_event("u1", "a", EventKind.CLICK)
    slates = store.shown_slates(window=timedelta(hours=1))
    assert [s.shown for s in slates] == [("a", "b")] and slates[0].engaged == frozenset()
