import json
from pathlib import Path

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from whyrec.core.catalog import EventKind, Item
from whyrec.core.errors import ConfigError
from whyrec.core.schema import Attribution, FactKind, RankedItem
from whyrec.explainer import (
    build_fact_table,
    check_grounding,
    load_template,
    template_sentence,
)
from whyrec.explainer.facts import description_phrase
from whyrec.explainer.grounding_eval import (
    evaluate_grounding_check,
    load_labelled_sentences,
)
from whyrec.explainer.parsing import ExplanationParser
from whyrec.explainer.templates import parse_template

LAMP = Item("lamp", "Lumora LED Desk Lamp, Warm White", "Lumora", ("Office", "Lighting", "Desk Lamps"), "A dimmable lamp for desks. Second sentence.", 39.0, {"color": "white"})
STAND = Item("stand", "Oakline Monitor Stand", "Oakline", ("Office", "Desk Setup", "Monitor Stands"))
REPO_PROMPTS = Path(__file__).resolve().parents[1] / "prompts"
OLD_LAMP = Item("old", "Lumora Clip Lamp", "Lumora", ("Office", "Lighting", "Desk Lamps"))


def _table(attributions=(Attribution("old", 0.8, 12), Attribution("stand", 0.1, 3))):
    ranked = RankedItem("lamp", 2, 0.7, 3.1, ("old",), tuple(attributions), candidates_scored=50)
    return build_fact_table("u1", LAMP, ranked, [(STAND, EventKind.VIEW), (OLD_LAMP, EventKind.PURCHASE)])


def test_fact_table_names_the_item_its_drivers_and_what_they_share():
    table = _table()
    kinds = [f.kind for f in table.facts]
    assert FactKind.ITEM_BRAND in kinds and FactKind.ITEM_PRICE in kinds and FactKind.ITEM_ATTRIBUTE in kinds
    history = {f.text for f in table.history_facts()}
    assert 'You bought "Lumora Clip Lamp".' in history
    assert 'Like "Lumora Clip Lamp", it is made by Lumora.' in history
    assert 'Without "Lumora Clip Lamp" in your history it would rank #12 instead of #2.' in history
    assert [f.fact_id for f in table.facts] == [f"F{i}" for i in range(1, len(table.facts) + 1)]


def test_a_focused_prompt_shows_the_one_history_item_tied_to_the_item_and_what_ties_them():
    from whyrec.explainer.explainer import prompt_variables

    # The stand raised the score most but shares nothing with the lamp; the old lamp is told instead.
    table = _table((Attribution("stand", 0.8, 12), Attribution("old", 0.3, 5)))
    facts = prompt_variables(load_template("shopper", 4), table)["facts"]
    assert "You bought <history item>." in facts and "Like <history item>, it is made by Lumora." in facts
    assert "Oakline" not in facts and "dimmable" not in facts and "Clip" not in facts
    assert "The recommended item is <recommended item>." in facts
    # The full prompt still shows both history items.
    assert "Oakline" in prompt_variables(load_template("shopper", 3), table)["facts"]


def test_a_focused_prompt_tells_what_other_shoppers_bought_rather_than_also_what_they_looked_at():
    from whyrec.core.schema import Evidence
    from whyrec.explainer.explainer import prompt_variables

    ranked = RankedItem("lamp", 2, 0.7, 3.1, ("old",), (Attribution("old", 0.8, 12),), candidates_scored=50)
    table = build_fact_table("u1", LAMP, ranked, [(OLD_LAMP, EventKind.PURCHASE)], [Evidence("old", "lamp", bought_after=3, viewed_after=7)])
    facts = prompt_variables(load_template("shopper", 4), table)["facts"]
    assert "3 other shoppers who bought <history item> went on to buy it." in facts and "looked at" not in facts
    assert any(f.kind is FactKind.VIEWED_TOGETHER for f in table.facts)  # the check still reads it


def test_an_answer_written_with_name_slots_is_checked_with_the_catalog_titles_in_them():
    from whyrec.explainer import Explainer
    from whyrec.explainer.slots import fill_slots, with_slots

    table = _table((Attribution("stand", 0.8, 12), Attribution("old", 0.3, 5)))
    slots = {"<history item>": "Lumora Clip Lamp", "<recommended item>": "Lumora LED Desk Lamp"}
    written = "Like the <history item> you bought, the <recommended item> is made by Lumora."
    assert fill_slots(written, slots) == "Like the Lumora Clip Lamp you bought, the Lumora LED Desk Lamp is made by Lumora."
    assert fill_slots("You bought <history item>.", slots) == 'You bought "Lumora Clip Lamp".'
    assert with_slots('You bought "Lumora Clip Lamp"; here is the Lumora LED Desk Lamp.', slots) == "You bought <history item>; here is the <recommended item>."
    # A stand-in model that writes one answer in slots (the real one cannot be made to on demand).
    model = FakeListChatModel(responses=[json.dumps({"text": written, "facts": ["F8", "F9"]})])
    [shown] = Explainer(model, load_template("shopper", 4), "fake").explain([table])
    assert shown.source.value == "llm" and shown.text == fill_slots(written, slots)
    # A product named twice stands where a fact's value belongs: refused before the check.
    model = FakeListChatModel(responses=[json.dumps({"text": "You bought <history item>; <recommended item> is a <recommended item> too.", "facts": []})] * 2)
    [shown] = Explainer(model, load_template("shopper", 4), "fake").explain([table])
    assert shown.source.value == "template" and "twice" in shown.attempts[0].reason
    # A slot the prompt did not fill stays as written, and fails the check.
    model = FakeListChatModel(responses=[json.dumps({"text": "You bought <other item>, made by Lumora.", "facts": []})] * 2)
    [shown] = Explainer(model, load_template("shopper", 4), "fake").explain([table])
    assert shown.source.value == "template" and not shown.attempts[0].passed


def test_a_slates_checked_first_answers_are_stored_before_the_retry_of_its_failures():
    from langchain_core.language_models.chat_models import BaseChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration, ChatResult

    from whyrec.explainer import Explainer
    from whyrec.explainer.cache import cache_key

    good = _table()
    only_stand = RankedItem("lamp", 2, 0.7, 3.1, ("stand",), (Attribution("stand", 0.8, 12),), candidates_scored=50)
    bad = build_fact_table("u1", LAMP, only_stand, [(STAND, EventKind.VIEW)])
    template = load_template("shopper", 4)
    seen_at_retry = []

    class Writer(BaseChatModel):
        """A stand-in model: the good answer for the lamp table, an invented one for the other, and
        at the retry it looks at what the cache already holds (the real model cannot be steered so)."""

        @property
        def _llm_type(self) -> str:
            return "writer"

        def _generate(self, messages, stop=None, run_manager=None, **kwargs):
            prompt = "\n".join(str(m.content) for m in messages)
            if "rejected" in prompt:
                seen_at_retry.append(explainer.cache.get(cache_key(good, template.label, "w"), False) is not None)
                text = "It is waterproof."
            elif "made by Lumora" in prompt:
                text = "Like <history item>, which you bought, it is made by Lumora."
            else:
                text = "It is waterproof."
            return ChatResult(generations=[ChatGeneration(message=AIMessage(content=json.dumps({"text": text, "facts": []})))])

    explainer = Explainer(Writer(), template, "w")
    shown = explainer.explain([good, bad])
    assert [e.source.value for e in shown] == ["llm", "template"] and seen_at_retry == [True]


def test_a_template_telling_no_history_items_is_rejected():
    text = (REPO_PROMPTS / "shopper.v4.yaml").read_text().replace("history_items: 1", "history_items: 0")
    with pytest.raises(ConfigError, match="history_items"):
        parse_template(text)


def test_history_items_that_lowered_the_score_are_not_cited():
    table = _table((Attribution("old", -0.4, 1), Attribution("stand", 0.3, 5)))
    assert {f.value for f in table.facts if f.kind is FactKind.HISTORY_ITEM} == {"Oakline Monitor Stand"}


def test_description_phrase_is_the_first_sentence_only():
    phrases = [f.value for f in _table().facts if f.kind is FactKind.ITEM_PHRASE]
    assert phrases == ["A dimmable lamp for desks."]


def test_grounding_accepts_a_sentence_built_from_the_facts():
    verdict = check_grounding("Because you bought the Lumora Clip Lamp, here is another Lumora desk lamp.", _table())
    assert verdict.passed, verdict.reason


@pytest.mark.parametrize(
    "text, word",
    [
        ("Because you bought the Lumora Clip Lamp, here is a black Lumora lamp.", "black"),
        ("Because you bought the Lumora Clip Lamp, this large Lumora lamp fits.", "large"),
        ("Because you bought the Lumora Clip Lamp, this waterproof lamp is for you.", "waterproof"),
        ("Because you bought the Lumora Clip Lamp, this lamp costs 25.00.", "25.00"),
        ("Because you bought 3 Lumora Clip Lamps, here is another.", "3"),
    ],
)
def test_grounding_rejects_an_invented_attribute(text, word):
    verdict = check_grounding(text, _table())
    assert not verdict.passed and word in verdict.unsupported


def test_grounding_rejects_text_that_never_mentions_the_shoppers_history():
    verdict = check_grounding("The Lumora LED Desk Lamp is made by Lumora.", _table())
    assert not verdict.passed and "history" in verdict.reason


def test_the_template_sentence_passes_the_grounding_check():
    text, facts = template_sentence(_table())
    assert text == 'Like "Lumora Clip Lamp", which you bought, it is made by Lumora.'
    assert check_grounding(text, _table()).passed
    assert {f.kind for f in facts} == {FactKind.HISTORY_ITEM, FactKind.SHARED_BRAND}
    assert len({f.history_item_id for f in facts}) == 1  # the relation and the history fact are about the same item


@pytest.mark.parametrize(
    "raw, text, ids",
    [
        ('Explanation: "Because you bought X." [F3]', "Because you bought X.", ("F3",)),
        ('{"text": "Because you bought X.", "facts": ["F1", "F4"]}', "Because you bought X.", ("F1", "F4")),
        ("Because you bought X. It is great. It is cheap. More.", "Because you bought X. It is great.", ()),
        ("\n\nBecause you bought X.\nNote: ignore this line", "Because you bought X.", ()),
    ],
)
def test_parser_tolerates_formatting_slips(raw, text, ids):
    parsed = ExplanationParser().parse(raw)
    assert (parsed.text, parsed.fact_ids) == (text, ids)


def test_templates_load_from_the_package_as_chat_prompts():
    spec = load_template("shopper")
    assert spec.version >= 1 and "facts" in spec.variables
    messages = spec.chat_prompt().format_messages(facts="[F1] x")
    assert messages[-1].content.startswith("Facts:\n[F1] x")


def test_a_template_whose_variables_do_not_match_its_messages_is_rejected():
    text = "name: t\nversion: 1\nvariables: [facts]\nmessages:\n  - role: human\n    content: 'Hi {shopper_name}'\n"
    with pytest.raises(ConfigError, match="shopper_name"):
        parse_template(text, "t.v1.yaml")


def test_an_unknown_template_version_lists_the_available_ones():
    with pytest.raises(ConfigError, match="available"):
        load_template("shopper", 999)


@pytest.mark.integration
def test_slate_explanations_are_grounded_or_marked_as_template(slice_recommender, slice_catalog):
    result = slice_recommender.recommend(slice_catalog.users[0], k=4)
    assert len(result.items) == 4
    for entry in result.items:
        explanation = entry.explanation
        assert explanation.text and explanation.attempts
        if explanation.source.value == "llm":
            assert explanation.grounded and explanation.attempts[-1].passed
        else:
            assert not explanation.grounded and not any(a.passed for a in explanation.attempts)
            assert len(explanation.attempts) == 2  # one retry before the template
        table_ids = {f.fact_id for f in explanation.facts}
        assert table_ids, "every shown text cites at least one fact"


@pytest.mark.integration
def test_a_slates_shared_prompt_start_is_computed_once_and_the_answers_are_those_of_whole_prompts(slice_recommender, slice_catalog):
    explainer = slice_recommender.explainer
    model = explainer.chat_model
    tables = slice_recommender.rank(slice_catalog.users[2], 3).tables
    conversations = [explainer.template.chat_prompt().format_messages(**explainer.variables(t)) for t in tables]
    try:
        model.reuse_prefix = False
        whole = model.generate_texts(conversations)
        model.reuse_prefix = True
        before = (model.prompt_tokens, model.prefilled_tokens)
        shared = model.generate_texts(conversations)
        prompt_tokens, prefilled = model.prompt_tokens - before[0], model.prefilled_tokens - before[1]
    finally:
        model.reuse_prefix = True
    assert shared == whole
    assert prefilled < prompt_tokens - 2 * 100  # the instructions (100+ tokens) were computed once, not three times


@pytest.mark.integration
def test_a_slate_interrupted_mid_generation_stores_nothing_and_runs_to_the_end_outside_the_block(slice_recommender, slice_catalog):
    from whyrec.explainer import (
        Explainer,
        ExplanationCache,
        GenerationInterrupted,
        interruptible,
    )

    shared = slice_recommender.explainer
    explainer = Explainer(shared.chat_model, shared.template, shared.model_name, cache=ExplanationCache())  # nothing stored yet
    tables = slice_recommender.rank(slice_catalog.users[3], 3).tables
    checks = []

    def stop() -> bool:
        checks.append(None)
        return len(checks) > 5  # a few decode steps in

    with interruptible(stop), pytest.raises(GenerationInterrupted):
        explainer.explain(tables)
    assert len(checks) == 6  # stopped at the step it was asked to
    assert explainer.missing(tables) == list(tables)  # no half-written answer was stored, not even as a template
    explained = explainer.explain(tables)
    assert all(e.attempts and e.attempts[0].raw_output for e in explained) and explainer.missing(tables) == []


def test_grounding_rejects_a_name_spliced_from_two_real_names():
    # Every word is in the facts, but no product is called "Oakline Clip Lamp".
    verdict = check_grounding("Because you bought the Oakline Clip Lamp, here is a Lumora lamp.", _table())
    assert not verdict.passed and '"Oakline Clip Lamp"' in verdict.unsupported


def test_grounding_accepts_a_name_that_appears_whole_in_one_fact():
    verdict = check_grounding("Because you bought the Lumora Clip Lamp, we suggest the Lumora LED Desk Lamp.", _table())
    assert verdict.passed, verdict.reason


def test_grounding_rejects_a_history_item_offered_as_the_recommendation():
    verdict = check_grounding("Because you bought the Lumora Clip Lamp, we suggest the Lumora Clip Lamp.", _table())
    assert not verdict.passed and "from the history" in verdict.reason


def test_the_labelled_grounding_set_covers_supported_paraphrases_and_subtle_inventions():
    sentences = load_labelled_sentences()
    kinds = {s.kind for s in sentences if not s.supported}
    assert len(sentences) >= 100
    assert {s.kind for s in sentences if s.supported} >= {"paraphrase", "template", "counterfactual"}
    assert kinds >= {"colour", "size", "number", "splice", "wrong_brand", "false_history"}


def test_the_grounding_check_catches_the_labelled_inventions_without_rejecting_the_paraphrases():
    report = evaluate_grounding_check(load_labelled_sentences())
    assert report["recall"] >= 0.95, report["missed"]
    assert report["precision"] >= 0.95, report["wrongly_rejected"]
    assert report["by_split"]["heldout"]["recall"] >= 0.9


# The claim classes of the labelled set: a relation spliced onto another history item, counts,
# verbs, attributes moved between the item and a history item, cut-off text, taste summaries, "the user".
CLAIM_CLASSES = {"splice_brand", "splice_category", "splice_use", "count_altered", "together_verb", "wrong_verb",
                 "item_attr_to_history", "history_attr_to_item", "truncated", "taste_as_item", "third_person"}


def test_the_labelled_set_has_the_claim_classes_on_all_three_shops_and_a_half_written_before_the_rules():
    sentences = load_labelled_sentences()
    new = [s for s in sentences if s.split in ("before_rules", "claims_dev")]
    before = [s for s in new if s.split == "before_rules"]
    assert len(new) >= 150 and len(before) >= len(new) / 2
    assert {s.kind for s in before if not s.supported} >= CLAIM_CLASSES
    assert {s.table.user_id[:1] for s in new} >= {"u", "c"}  # sample-shop shoppers and taste cases beside the Amazon ids
    assert sum(s.supported for s in before) >= 0.4 * len(before)  # as many true paraphrases: a check that rejects everything fails


@pytest.mark.parametrize("split", ["before_rules", "claims_dev"])
def test_the_check_rejects_every_labelled_splice_and_accepts_nearly_every_true_sentence(split):
    sentences = [s for s in load_labelled_sentences() if s.split == split]
    splices = [s for s in sentences if "splice" in s.kind]
    true = [s for s in sentences if s.supported]
    assert splices and all(not check_grounding(s.text, s.table).passed for s in splices), [s.text for s in splices if check_grounding(s.text, s.table).passed]
    accepted = [s for s in true if check_grounding(s.text, s.table).passed]
    assert len(accepted) >= 0.95 * len(true), [(s.text, check_grounding(s.text, s.table).reason) for s in true if s not in accepted]


@pytest.mark.parametrize(
    "text, reason",
    [
        # The history item's brand, not the recommended lamp's.
        ("Because you looked at the Oakline Monitor Stand, here is another Oakline product.", "oakline"),
        # The stand was looked at, not bought.
        ("Because you bought the Oakline Monitor Stand, here is the Lumora LED Desk Lamp.", "records"),
        # The recommended item claimed as already bought.
        ("Because you bought the Lumora LED Desk Lamp, here is another Lumora lamp.", "recommended item"),
        # Rank and counterfactual swapped.
        ("Without the Lumora Clip Lamp in your history it would rank #2 instead of #12.", "#2"),
        # "Monitor" belongs to the stand, not to the lamp.
        ("Because you bought the Lumora Clip Lamp, here is a Lumora monitor lamp.", "monitor"),
        # A purchase of something the history does not show.
        ("Because you bought a Lumora desk, here is the Lumora LED Desk Lamp.", "desk"),
    ],
)
def test_grounding_rejects_true_words_put_to_a_false_claim(text, reason):
    verdict = check_grounding(text, _table())
    assert not verdict.passed and reason in verdict.reason


def test_grounding_accepts_the_counterfactual_told_either_way_round():
    table = _table()
    assert check_grounding("Without the Lumora Clip Lamp in your history it would rank #12 instead of #2.", table).passed
    assert check_grounding("The Lumora Clip Lamp you bought lifts this lamp from #12 to #2.", table).passed


def test_fact_table_says_what_a_history_item_shares_with_the_item():
    table = _table()
    shared = {f.kind: f.value for f in table.facts if f.about_history and f.kind is not FactKind.HISTORY_ITEM}
    assert shared[FactKind.SHARED_CATEGORY] == "Desk Lamps"
    assert shared[FactKind.SHARED_USE] == "lamp"


def test_css_pasted_into_a_description_is_not_taken_as_a_phrase():
    item = Item("x", "Ink", "HP", (), ".headerM {color:#000000;font-size:24px;} Long lasting ink for home printers. More.")
    assert description_phrase(item) == "Long lasting ink for home printers."
