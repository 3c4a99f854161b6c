import json
from pathlib import Path

import pytest

from whyrec.core.errors import ConfigError
from whyrec.core.schema import (
    Explanation,
    ExplanationSource,
    Fact,
    FactKind,
    FactTable,
    FallbackReason,
)
from whyrec.explainer import check_grounding, template_sentence
from whyrec.explainer.cache import ExplanationCache, cache_key
from whyrec.explainer.evaluation import explanation_metrics, unique_sentence_ratio
from whyrec.explainer.reference_eval import (
    bleu4,
    load_reference_cases,
    reference_fact_table,
    rouge_l,
)

CASES = Path(__file__).resolve().parent / "data" / "reference_cases.jsonl"


def test_unique_sentence_ratio_counts_repeated_sentences_once():
    texts = ["Because you bought A. It is by B.", "Because you bought A.", "Because you bought C."]
    assert unique_sentence_ratio(texts) == pytest.approx(3 / 4)


def test_metrics_separate_raw_from_shown_grounding_and_count_fallbacks():
    table = reference_fact_table(load_reference_cases(CASES)[0])
    text, facts = template_sentence(table)
    from whyrec.core.schema import Attempt

    failed = Attempt("It is waterproof.", "It is waterproof.", False, "not in the facts: waterproof")
    good = Attempt("x", "Because you bought the Swingline Classic Desk Stapler, here are Swingline Staples.", True, "ok")
    explanations = [
        Explanation(text, ExplanationSource.TEMPLATE, False, facts, attempts=(failed, failed)),
        Explanation(good.text, ExplanationSource.LLM, True, facts, attempts=(good,)),
    ]
    metrics = explanation_metrics([table, table], explanations, seconds=2.0)
    assert metrics["raw_grounded_rate"] == 0.5 and metrics["shown_grounded_rate"] == 1.0
    assert metrics["fallback_rate"] == 0.5 and metrics["unsupported_claim_rate"] == 0.5
    assert metrics["seconds_per_explanation"] == 1.0 and metrics["history_citation_rate"] == 1.0


def test_the_unique_sentence_ratio_counts_one_text_per_distinct_evidence():
    from dataclasses import replace

    table = reference_fact_table(load_reference_cases(CASES)[0])
    text, facts = template_sentence(table)
    same = Explanation(text, ExplanationSource.TEMPLATE, False, facts)
    # Two shoppers with the same facts share one sentence by design; a third table is new evidence.
    other = replace(table, user_id="u2")
    new_item = replace(table, item_id="another")
    metrics = explanation_metrics([table, other, new_item], [same, same, same], seconds=1.0)
    assert metrics["distinct_evidence"] == 2
    assert metrics["usr"] == pytest.approx(1 / 2) and metrics["usr_all_texts"] == pytest.approx(1 / 3)


def test_a_reference_case_gives_a_fact_table_from_the_row_alone():
    table = reference_fact_table(load_reference_cases(CASES)[0])
    assert [f.kind for f in table.facts] == [FactKind.ITEM_TITLE, FactKind.ITEM_ATTRIBUTE, FactKind.HISTORY_ITEM]
    assert check_grounding(template_sentence(table)[0], table).passed


def test_a_reference_history_entry_that_summarises_the_shoppers_taste_is_a_taste_fact_not_a_purchase():
    table = reference_fact_table(load_reference_cases(CASES)[1])  # history: "Likes fountain pens and bright ink"
    assert [f.kind for f in table.facts] == [FactKind.ITEM_TITLE, FactKind.ITEM_ATTRIBUTE, FactKind.TASTE]
    assert not any("You bought" in f.text for f in table.facts)
    text = template_sentence(table)[0]
    assert text == 'Picked for your taste: "Likes fountain pens and bright ink".' and check_grounding(text, table).passed
    bought = check_grounding("Because you bought fountain pens and bright ink, here is the Pilot Iroshizuku Bottled Ink.", table)
    assert not bought.passed and "taste" in bought.reason


def test_a_malformed_reference_row_names_the_line_and_field(tmp_path):
    bad = tmp_path / "refs.jsonl"
    bad.write_text(CASES.read_text() + json.dumps({"id": 3, "history": ["x"], "item": {"attributes": {}}, "reference": "y"}) + "\n")
    with pytest.raises(ConfigError, match=r"line 3: field 'item.title'"):
        load_reference_cases(bad)


def test_identical_texts_score_one_and_disjoint_texts_score_zero():
    assert bleu4(["because you bought the red stapler here are staples"], ["because you bought the red stapler here are staples"]) == pytest.approx(1.0)
    assert rouge_l(["a b c"], ["a b c"]) == 1.0 and rouge_l(["a b c"], ["x y z"]) == 0.0
    assert bleu4(["a b c d"], ["w x y z"]) == 0.0


def _table(user="u1", brand="Lumora"):
    return FactTable(user, "lamp", (Fact("F1", FactKind.ITEM_TITLE, 'The recommended item is "Lamp".', "Lamp"), Fact("F2", FactKind.HISTORY_ITEM, f'You bought "{brand} Clip".', f"{brand} Clip", history_item_id="clip")))


def test_the_cache_key_changes_with_the_facts_template_version_and_model_but_not_the_shopper():
    base = cache_key(_table(), "shopper.v2", "m")
    assert base == cache_key(_table(), "shopper.v2", "m") == cache_key(_table(user="u2"), "shopper.v2", "m")
    assert len({base, cache_key(_table(brand="Oak"), "shopper.v2", "m"), cache_key(_table(), "shopper.v1", "m"), cache_key(_table(), "shopper.v2", "m+lora")}) == 4


def test_the_cache_drops_the_least_recently_used_entry_when_full():
    cache = ExplanationCache(max_size=2)
    e = Explanation("t", ExplanationSource.TEMPLATE, False, ())
    cache.put("a", e), cache.put("b", e)
    cache.get("a")
    cache.put("c", e)
    assert cache.get("b") is None and cache.get("a") is e and len(cache) == 2


def test_a_generator_that_is_down_gives_the_template_sentence_and_says_why():
    import socket

    from whyrec.core.config import Settings
    from whyrec.explainer import Explainer, load_template, make_chat_model

    with socket.socket() as s:  # a port nothing listens on: the server is really down
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings(llm_url=f"http://127.0.0.1:{port}/v1", llm_model="smollm2-135m-instruct", llm_timeout_s=5)
    model, name = make_chat_model(settings)
    table = reference_fact_table(load_reference_cases(CASES)[0])
    [explanation] = Explainer(model, load_template("shopper"), name).explain([table])
    assert explanation.source is ExplanationSource.TEMPLATE and explanation.text == template_sentence(table)[0]
    assert explanation.fallback is FallbackReason.LLM_UNAVAILABLE and explanation.attempts[0].reason.startswith("llm unavailable")


@pytest.mark.integration
def test_a_cached_explanation_costs_no_generation(slice_recommender, slice_catalog):
    from whyrec.explainer import Explainer

    shared = slice_recommender.explainer
    explainer = Explainer(shared.chat_model, shared.template, shared.model_name, cache=ExplanationCache())
    tables = list(slice_recommender.rank(slice_catalog.users[1], 2).tables)
    first = explainer.explain(tables)
    generated = shared.chat_model.generations
    assert generated >= 2
    again = explainer.explain(tables)
    assert shared.chat_model.generations == generated
    assert again == first and explainer.cache.stats()["hits"] == 2


def test_metrics_count_the_claims_of_shown_texts_and_any_that_no_fact_supports():
    from tests.test_claims import _socks_table

    table = _socks_table()
    text, facts = template_sentence(table)
    spliced = 'Because you looked at "Trailhead Insulated Water Bottle", another Stridewell product.'
    shown = [Explanation(text, ExplanationSource.TEMPLATE, False, facts), Explanation(spliced, ExplanationSource.LLM, True, facts)]
    metrics = explanation_metrics([table, table], shown, seconds=1.0)
    assert metrics["claims_per_text"] == 2.0 and metrics["template_share"] == 0.5
    assert metrics["shown_unsupported_claims"] == 1 and metrics["shown_failing_texts"] == 1
    assert metrics["bare_reason_rate"] == 0.0
    bare = Explanation('Because you bought "Stridewell Road Running Shoe".', ExplanationSource.TEMPLATE, False, facts)
    assert explanation_metrics([table], [bare], seconds=1.0)["bare_reason_rate"] == 1.0


def test_the_check_is_scored_per_class_on_all_sentences_and_on_the_half_written_before_the_rules():
    from whyrec.explainer.grounding_eval import (
        evaluate_grounding_check,
        load_labelled_sentences,
    )

    report = evaluate_grounding_check(load_labelled_sentences())
    assert report["by_class"]["splice_brand"]["rejected"] == 1.0
    assert report["before_rules_by_class"]["collaborative"]["supported"] is True
    assert set(report["by_split"]) >= {"dev", "heldout", "before_rules", "claims_dev"}
