"""The check reads a sentence as claims with subjects and matches each one to a single fact about
the same things; the deterministic sentence is built from one relation fact and its own subject."""

import json
import subprocess
import sys

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from whyrec.core.catalog import EventKind, Item
from whyrec.core.schema import Attribution, Evidence, FactKind, RankedItem
from whyrec.explainer import (
    build_fact_table,
    check_grounding,
    checked_template,
    load_template,
    one_fact_sentence,
    template_sentence,
)
from whyrec.explainer.explainer import Explainer
from whyrec.explainer.grounding import is_bare, missing_reason
from whyrec.explainer.parsing import ExplanationParser

SOCKS = Item("socks", "Stridewell Merino Running Socks", "Stridewell", ("Outdoors", "Running", "Running Socks"), price=14.0, attributes={"color": "grey"})
BOTTLE = Item("bottle", "Trailhead Insulated Water Bottle", "Trailhead", ("Outdoors", "Hydration", "Water Bottles"))
SHOE = Item("shoe", "Stridewell Road Running Shoe", "Stridewell", ("Outdoors", "Running", "Running Shoes"))
DESK = Item("desk", "Oakline Walnut Standing Desk", "Oakline", ("Office", "Furniture", "Desks"))
PHONE = Item("phone", "AT&T 210 Corded Phone", "AT&T", ("Electronics", "Telephones", "Corded Telephones"))


def _socks_table():
    """The bottle was looked at and raised the score most; the shoe was bought, shares the brand and
    the Running category, and 3 other shoppers went from it to the socks."""
    ranked = RankedItem("socks", 2, 0.7, 3.1, ("bottle",), (Attribution("bottle", 0.9, 9), Attribution("shoe", 0.4, 5)), candidates_scored=20)
    evidence = [Evidence("shoe", "socks", bought_after=3, viewed_after=5), Evidence("bottle", "socks", bought_after=0, viewed_after=2)]
    return build_fact_table("u1", SOCKS, ranked, [(SHOE, EventKind.PURCHASE), (BOTTLE, EventKind.VIEW)], evidence)


def _fact(table, kind, history_item_id=None):
    return next(f for f in table.facts if f.kind is kind and (history_item_id is None or f.history_item_id == history_item_id))


def test_every_fact_names_its_subjects_by_id():
    table = _socks_table()
    assert all(f.item_id == "socks" for f in table.facts if f.kind.value.startswith("item_"))
    shoe = _fact(table, FactKind.HISTORY_ITEM, "shoe")
    assert (shoe.event, shoe.position, shoe.value) == (EventKind.PURCHASE, 2, "Stridewell Road Running Shoe")
    brand = _fact(table, FactKind.SHARED_BRAND)
    assert (brand.history_item_id, brand.item_id, brand.value) == ("shoe", "socks", "Stridewell")
    together = _fact(table, FactKind.BOUGHT_TOGETHER)
    assert (together.history_item_id, together.count) == ("shoe", 3)
    assert together.text == '3 other shoppers who bought "Stridewell Road Running Shoe" went on to buy it.'
    assert _fact(table, FactKind.VIEWED_TOGETHER, "bottle").count == 2


@pytest.mark.parametrize(
    "text",
    [
        # The splices: the Stridewell and Running facts are about the shoe, not the bottle.
        'Because you looked at "Trailhead Insulated Water Bottle", another Stridewell product.',
        'Because you looked at "Trailhead Insulated Water Bottle", something else in Running.',
        "Like the Trailhead bottle you looked at, these socks are made by Stridewell.",
    ],
)
def test_a_relation_spliced_onto_another_history_item_fails_and_the_reason_names_both_facts(text):
    table = _socks_table()
    verdict = check_grounding(text, table)
    bottle, shoe_fact = _fact(table, FactKind.HISTORY_ITEM, "bottle"), next(f for f in table.facts if f.history_item_id == "shoe" and f.kind in (FactKind.SHARED_BRAND, FactKind.SHARED_CATEGORY) and f.value in text)
    assert not verdict.passed and "splices two facts" in verdict.reason
    assert bottle.fact_id in verdict.reason and shoe_fact.fact_id in verdict.reason


def test_the_same_relation_told_of_its_own_history_item_passes_with_each_claim_matched():
    table = _socks_table()
    verdict = check_grounding("Like the Stridewell Road Running Shoe you bought, these socks are made by Stridewell.", table)
    assert verdict.passed, verdict.reason
    matched = {(c.kind, c.fact_id) for c in verdict.claims}
    assert matched == {("history", _fact(table, FactKind.HISTORY_ITEM, "shoe").fact_id), ("relation", _fact(table, FactKind.SHARED_BRAND).fact_id)}


@pytest.mark.parametrize(
    "text, reason",
    [
        ("Because you bought the Stridewell shoe: 4 other shoppers who bought it went on to buy these socks.", "says 4 shoppers"),
        # 2 is the bottle's count (of shoppers who looked), not the shoe's.
        ("Because you bought the Stridewell shoe: 2 other shoppers who looked at it went on to look at these too.", "splices two facts"),
        # 5 shoppers looked; 3 bought.
        ("Because you bought the Stridewell shoe: 5 other shoppers who bought it went on to buy these socks.", "they only looked at it"),
        ("Because you looked at the Trailhead bottle: 2 other shoppers who bought it went on to buy these socks.", "only looked at it"),
    ],
)
def test_a_count_of_shoppers_must_be_the_count_of_that_history_items_fact(text, reason):
    verdict = check_grounding(text, _socks_table())
    counted = next(c for c in verdict.claims if c.kind == "together")
    assert not verdict.passed and not counted.matched and reason in counted.problem, counted


def test_the_right_count_with_the_right_verbs_passes():
    table = _socks_table()
    for text in (
        "Because you bought the Stridewell shoe: 3 other shoppers who bought it went on to buy these socks.",
        "5 other shoppers who looked at the Stridewell Road Running Shoe you bought went on to look at these socks too.",
        "You looked at the Trailhead bottle, and 2 other shoppers who looked at it went on to look at these socks too.",
    ):
        assert check_grounding(text, table).passed, (text, check_grounding(text, table).reason)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("Because you bought the Trailhead Insulated Water Bottle, here are Stridewell socks.", "records that you looked at it"),
        ("Because you looked at the Stridewell Road Running Shoe, here are Stridewell socks.", "records that you bought it"),
        # Grey is the socks' colour, not the shoe's.
        ("Because you bought the grey Stridewell Road Running Shoe, here are Stridewell socks.", "the recommended item's"),
        # "Trailhead" is the bottle's brand.
        ("Because you bought the Trailhead Running Shoe, here are Stridewell socks.", "Trailhead"),
        # "Insulated" is the bottle's, not the socks'.
        ("Because you bought the Stridewell Road Running Shoe, here are insulated Stridewell socks.", "insulated"),
    ],
)
def test_what_the_shopper_did_and_what_each_item_is_come_from_that_items_own_facts(text, reason):
    verdict = check_grounding(text, _socks_table())
    assert not verdict.passed and reason.lower() in verdict.reason.lower(), verdict.reason


@pytest.mark.parametrize(
    "text",
    [
        "Because you bought the Stridewell Road Running Shoe, here are the Stridewell Merino Running Soc.",
        "Because you bought the Stridewell Road Running Shoe, here are the",
        'Because you bought "Stridewell Road Running Shoe, here are Stridewell socks.',
        "Because you bought the Stridewell Road Running Shoe, here are Stridewell socks",
    ],
)
def test_text_cut_off_mid_word_or_mid_sentence_fails(text):
    verdict = check_grounding(text, _socks_table())
    assert not verdict.passed and "cut off" in verdict.reason, verdict.reason


def test_an_answer_cut_off_inside_its_json_text_is_never_shown():
    parsed = ExplanationParser().parse('{"text": "Because you bought the Stridewell Road Running Shoe, here are Stridewell socks.')
    assert parsed.cut_off


@pytest.mark.parametrize("text", ["The user bought the Stridewell Road Running Shoe, so here are Stridewell socks.", "This shopper bought the Stridewell Road Running Shoe; here are Stridewell socks."])
def test_the_shopper_spoken_of_in_the_third_person_fails(text):
    verdict = check_grounding(text, _socks_table())
    assert not verdict.passed and "third person" in verdict.reason


def test_the_template_tells_one_relation_with_the_history_item_it_is_about():
    table = _socks_table()
    text, used = template_sentence(table)
    # The bottle raised the score most but shares nothing; the shoe's shared brand is the strongest relation.
    assert text == 'Like "Stridewell Road Running Shoe", which you bought, it is made by Stridewell.'
    assert {f.history_item_id for f in used} == {"shoe"} and check_grounding(text, table).passed


def test_an_item_sharing_nothing_with_the_history_gets_the_collaborative_evidence_with_its_count():
    # The desk after the phone: no brand, category or use in common; 12 shoppers went from one to the other.
    ranked = RankedItem("desk", 1, 0.9, 2.0, ("phone",), (Attribution("phone", 1.2, 14),), candidates_scored=20)
    table = build_fact_table("u1", DESK, ranked, [(PHONE, EventKind.PURCHASE)], [Evidence("phone", "desk", bought_after=12, viewed_after=12)])
    text, used = checked_template(table)
    assert text == 'Because you bought "AT&T 210 Corded Phone": 12 other shoppers who bought it went on to buy this.'
    assert [f.kind for f in used] == [FactKind.HISTORY_ITEM, FactKind.BOUGHT_TOGETHER]
    assert text != one_fact_sentence(table)[0]


def test_often_next_comes_after_what_items_share_and_what_other_shoppers_bought():
    ranked = RankedItem("desk", 1, 0.9, 2.0, ("phone",), (Attribution("phone", 1.2, 14),), candidates_scored=20)
    table = build_fact_table("u1", DESK, ranked, [(PHONE, EventKind.VIEW)], [Evidence("phone", "desk", next_rank=3)])
    text, _ = checked_template(table)
    assert text == 'Because you looked at "AT&T 210 Corded Phone": it is among the items shoppers are most likely to pick next after it.'
    assert not check_grounding('Because you looked at "AT&T 210 Corded Phone": 3 other shoppers who bought it went on to buy this.', table).passed


def test_with_no_relation_the_one_fact_sentence_is_shown_and_it_passes_the_check():
    ranked = RankedItem("desk", 1, 0.9, 2.0, ("phone",), (Attribution("phone", 1.2, 14),), candidates_scored=20)
    table = build_fact_table("u1", DESK, ranked, [(PHONE, EventKind.PURCHASE)])
    assert checked_template(table)[0] == 'Because you bought "AT&T 210 Corded Phone".' == one_fact_sentence(table)[0]


def test_what_the_counted_shoppers_went_on_to_buy_is_the_item_never_a_history_item():
    table = _socks_table()
    verdict = check_grounding("3 other shoppers who bought the Stridewell Road Running Shoe went on to buy the Stridewell Road Running Shoe.", table)
    assert not verdict.passed and "an item of your history" in verdict.reason
    assert check_grounding("3 other shoppers who bought the Stridewell Road Running Shoe went on to buy the Stridewell Merino Running Socks.", table).passed


@pytest.mark.parametrize(
    "text",
    [
        # An untuned model's answer on a fresh install, which the word rules let through.
        'The item is a running shoe, and the item is a "Stridewell Road Running Shoe".',
        'The seller describes it as a "Trailhead Insulated Water Bottle".',
    ],
)
def test_what_the_item_is_or_what_the_seller_says_of_it_comes_from_the_items_own_facts(text):
    verdict = check_grounding(text, _socks_table())
    assert not verdict.passed and ("only a history item has" in verdict.reason or "an item from the history" in verdict.reason), verdict.reason


def test_a_value_word_inside_a_quoted_title_is_part_of_the_title():
    # The scanner's title ends in "Wireless"; "wireless" is the use the item shares with the presenter.
    printer = Item("printer", "Brother HL-2270DW Compact Laser Printer with Wireless Networking and Duplex", "Brother", ("Office", "Printers", "Laser Printers"))
    scanner = Item("scanner", "Brother ADS1000W Compact Color Desktop Scanner with Duplex and Wireless", "Brother", ("Office", "Scanners"))
    presenter = Item("presenter", "Logitech Wireless Presenter R400", "Logitech", ("Office", "Presentation"))
    ranked = RankedItem("printer", 1, 0.9, 2.0, ("presenter",), (Attribution("presenter", 1.0, 20), Attribution("scanner", 0.5, 4)), candidates_scored=20)
    table = build_fact_table("u1", printer, ranked, [(presenter, EventKind.PURCHASE), (scanner, EventKind.PURCHASE)])
    text, _ = checked_template(table)
    assert text == 'Like "Brother ADS1000W Compact Color Desktop Scanner with Duplex and Wireless", which you bought, it is made by Brother.'


def test_a_quoted_history_title_names_that_item_even_when_another_title_shares_its_words():
    cable = Item("cable", "Koch 002023 1/16 by 500-Feet 7 by 7 Cable", "Koch", ("Industrial", "Pulling & Lifting", "Cable & Wire Rope"))
    thimble = Item("thimble", "Loos Cableware AN100-C4 Stainless Steel Thimble for 3/32 and 1/8 Diameter Wire", "Loos", ("Industrial", "Pulling & Lifting", "Thimbles"))
    sleeve = Item("sleeve", "Aluminum Crimping Loop Sleeve for 1/8 Diameter Wire Rope and Cable", "", ("Industrial", "Pulling & Lifting", "Sleeves"))
    ranked = RankedItem("cable", 3, 0.9, 2.0, ("thimble",), (Attribution("thimble", 1.0, 4), Attribution("sleeve", 0.5, 3)), candidates_scored=20)
    table = build_fact_table("u1", cable, ranked, [(thimble, EventKind.PURCHASE), (sleeve, EventKind.PURCHASE)])
    text, _ = checked_template(table)
    assert text.startswith('Like "Loos Cableware AN100-C4 Stainless Steel Thimble for 3/32 and 1/8 Diameter Wire", which you bought'), text


def _desk_after_phone(evidence=()):
    ranked = RankedItem("desk", 1, 0.9, 2.0, ("phone",), (Attribution("phone", 1.2, 14),), candidates_scored=20)
    return build_fact_table("u1", DESK, ranked, [(PHONE, EventKind.PURCHASE)], list(evidence))


@pytest.mark.parametrize("text", ['Because you bought "AT&T 210 Corded Phone".', "You bought the AT&T 210 Corded Phone, so we suggest the Oakline Walnut Standing Desk."])
def test_a_true_sentence_naming_only_the_history_is_not_shown_while_the_facts_hold_a_reason(text):
    table = _desk_after_phone([Evidence("phone", "desk", bought_after=12, viewed_after=12)])
    verdict = check_grounding(text, table)
    assert verdict.passed and is_bare(text, table, verdict)  # every claim is true ...
    assert "gives no reason a shopper can follow" in missing_reason(text, table, verdict)  # ... but it says nothing
    # A stand-in model that writes this sentence every time (the real one cannot be made to on demand).
    model = FakeListChatModel(responses=[json.dumps({"text": text, "facts": ["F9"]})] * 2)
    [shown] = Explainer(model, load_template("shopper"), "fake").explain([table])
    assert [a.passed for a in shown.attempts] == [False, False] and "no reason" in shown.attempts[0].reason
    assert shown.text == 'Because you bought "AT&T 210 Corded Phone": 12 other shoppers who bought it went on to buy this.'


def test_naming_only_the_history_is_the_reason_when_the_facts_hold_no_other():
    table = _desk_after_phone()
    text = 'Because you bought "AT&T 210 Corded Phone".'
    assert missing_reason(text, table, check_grounding(text, table)) is None


def test_a_shared_brand_or_use_word_beside_the_names_is_a_reason():
    table = _socks_table()
    text = "You bought the Stridewell Road Running Shoe, so here are Stridewell socks."
    verdict = check_grounding(text, table)
    assert verdict.passed and not is_bare(text, table, verdict), verdict.reason


def test_a_history_item_that_lowered_the_score_is_not_cited_even_for_a_relation():
    # The shoe shares the brand but lowered the score: the reason may not name it.
    ranked = RankedItem("socks", 2, 0.7, 3.1, ("shoe",), (Attribution("bottle", 0.9, 9), Attribution("shoe", -0.4, 1)), candidates_scored=20)
    table = build_fact_table("u1", SOCKS, ranked, [(SHOE, EventKind.PURCHASE), (BOTTLE, EventKind.VIEW)])
    assert not any(f.history_item_id == "shoe" for f in table.facts)


# ---- `whyrec explainer check`: the same check for prompt engineers and support agents ----

WHYREC = [sys.executable, "-m", "whyrec.cli", "explainer", "check"]


def _check(*args):
    return subprocess.run([*WHYREC, *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.fixture
def fact_file(tmp_path):
    path = tmp_path / "facts.json"
    path.write_text(json.dumps({"fact_table": _socks_table().to_list()}))  # as an item entry's explanation prints it
    return path


def test_the_check_command_lists_each_claim_with_its_fact_and_exits_0_when_all_pass(fact_file):
    done = _check("--facts", fact_file, "--text", "Because you bought the Stridewell shoe: 3 other shoppers who bought it went on to buy these socks.", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["passed"] and report["reason"] == "ok"
    assert [(c["kind"], c["matched"]) for c in report["claims"]] == [("history", True), ("together", True)]
    assert report["claims"][1]["fact_text"] == '3 other shoppers who bought "Stridewell Road Running Shoe" went on to buy it.'


def test_the_check_command_exits_1_when_any_text_fails_and_says_why(fact_file, tmp_path):
    texts = tmp_path / "texts.jsonl"
    texts.write_text(json.dumps({"id": "a", "text": "Like the Stridewell Road Running Shoe you bought, these socks are made by Stridewell."}) + "\n"
                     + json.dumps('Because you looked at "Trailhead Insulated Water Bottle", another Stridewell product.') + "\n")
    done = _check("--facts", fact_file, "--texts", texts, "--json")
    assert done.returncode == 1
    first, second = json.loads(done.stdout)
    assert first["id"] == "a" and first["passed"] and not second["passed"]
    spliced = next(c for c in second["claims"] if not c["matched"])
    assert "splices two facts" in spliced["problem"] and spliced["history_item_id"] == "bottle"


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json", "not valid JSON"),
        (json.dumps([{"id": "F1", "kind": "colour", "text": "x"}]), "[0].kind: unknown kind 'colour'"),
        (json.dumps([{"id": "F1", "kind": "bought_together", "text": "x", "count": "many"}]), "[0].count: expected a whole number"),
        (json.dumps({"items": []}), "expected a list of facts or an object with 'fact_table'"),
    ],
)
def test_a_bad_fact_file_exits_2_naming_the_file_and_field(tmp_path, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    done = _check("--facts", bad, "--text", "Because you bought it.")
    assert done.returncode == 2 and str(bad) in done.stderr and message in done.stderr, done.stderr
    assert done.stdout == ""


def test_text_and_texts_are_one_or_the_other(fact_file):
    done = _check("--facts", fact_file)
    assert done.returncode == 2 and "exactly one of --text" in done.stderr


def test_a_brand_written_with_its_apostrophe_is_the_brand_fact_even_where_a_use_fact_spells_it_without():
    from whyrec.core.schema import Fact, FactKind, FactTable

    pen = dict(item_id="ink", history_item_id="pen")
    table = FactTable("u", "ink", (
        Fact("F1", FactKind.ITEM_TITLE, 'The recommended item is "Noodlers Ink 3 Oz Borealis Black".', "Noodlers Ink 3 Oz Borealis Black", item_id="ink"),
        Fact("F2", FactKind.ITEM_BRAND, "It is made by Noodler's.", "Noodler's", item_id="ink"),
        Fact("F3", FactKind.HISTORY_ITEM, 'You bought "Noodlers Ahab Fountain Pen Demo".', "Noodlers Ahab Fountain Pen Demo", history_item_id="pen", event=EventKind.PURCHASE, position=1),
        Fact("F4", FactKind.SHARED_BRAND, 'Like "Noodlers Ahab Fountain Pen Demo", it is made by Noodler\'s.', "Noodler's", **pen),
        Fact("F5", FactKind.SHARED_USE, 'Like "Noodlers Ahab Fountain Pen Demo", it is one of the noodlers products.', "noodlers", **pen),
        Fact("F6", FactKind.HISTORY_ITEM, 'You bought "Pentel Graph Gear 1000".', "Pentel Graph Gear 1000", history_item_id="pencil", event=EventKind.PURCHASE, position=2),
    ))
    assert template_sentence(table)[0] == 'Like "Noodlers Ahab Fountain Pen Demo", which you bought, it is made by Noodler\'s.'
    assert check_grounding(template_sentence(table)[0], table).passed
    spliced = check_grounding('Like "Pentel Graph Gear 1000", which you bought, it is made by Noodler\'s.', table)
    assert not spliced.passed and "F6" in spliced.reason and "F4" in spliced.reason


def test_the_shoppers_own_verb_after_a_title_other_shoppers_looked_at_must_be_their_recorded_event():
    from whyrec.core.schema import Fact, FactKind, FactTable

    pair = dict(item_id="lamp", history_item_id="bottle")
    table = FactTable("u", "lamp", (
        Fact("F1", FactKind.ITEM_TITLE, 'The recommended item is "Summitry Ultralight Headlamp".', "Summitry Ultralight Headlamp", item_id="lamp"),
        Fact("F2", FactKind.HISTORY_ITEM, 'You looked at "Trailhead Insulated Water Bottle".', "Trailhead Insulated Water Bottle", history_item_id="bottle", event=EventKind.VIEW, position=1),
        Fact("F3", FactKind.VIEWED_TOGETHER, '1 other shopper who looked at "Trailhead Insulated Water Bottle" went on to look at it too.', "1", event=EventKind.VIEW, count=1, **pair),
    ))
    # Seen on a fresh install: the tuned model gave the shopper a purchase they never made.
    wrong = check_grounding('1 other shopper who looked at "Trailhead Insulated Water Bottle", which you bought, went on to look at this too.', table)
    assert not wrong.passed and "F2" in wrong.reason
    assert check_grounding('1 other shopper who looked at "Trailhead Insulated Water Bottle", which you looked at, went on to look at this too.', table).passed
