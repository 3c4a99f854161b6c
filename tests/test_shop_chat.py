"""How the Shop chat reads a shopper's message (no models needed)."""

from whyrec.pipeline import topic_words
from whyrec.ui.shop import Card, SlateView, parse_intent

ITEMS = {"101", "202", "303"}
VIEW = SlateView("u1", (Card("101", "Desk Lamp", 1, "Because ..."), Card("202", "Stapler", 2, "Because ...")))


def test_a_request_for_picks_keeps_only_its_topic_words():
    assert parse_intent("show me something for my desk", ITEMS, None).kind == "recommend"
    assert topic_words("Show me something for my desk, please") == {"desk"}


def test_why_this_one_asks_about_the_first_card_and_ordinals_pick_others():
    assert parse_intent("why this one?", ITEMS, VIEW).position == 0
    assert parse_intent("Why the second one?", ITEMS, VIEW).position == 1
    assert parse_intent("why #2", ITEMS, VIEW).position == 1
    assert parse_intent("why 202?", ITEMS, VIEW).position == 1


def test_why_not_names_an_item_that_is_not_on_the_cards():
    intent = parse_intent("why not 303?", ITEMS, VIEW)
    assert (intent.kind, intent.item_id) == ("why_not", "303")
    assert parse_intent("why 303?", ITEMS, VIEW).kind == "why_not"
    assert parse_intent("why not?", ITEMS, VIEW).item_id is None
