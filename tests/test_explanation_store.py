"""The explanation store: checked texts kept in the service's database by fact-table content,
template and model, shared by shoppers with the same evidence, by replicas and across restarts."""

from sqlalchemy import create_engine

from whyrec.core.catalog import EventKind
from whyrec.core.schema import (
    Attempt,
    Explanation,
    ExplanationSource,
    Fact,
    FactKind,
    FactTable,
    FallbackReason,
)
from whyrec.explainer import ExplanationCache, ExplanationStore
from whyrec.explainer.cache import cache_key


def _table(user: str, count: int = 3) -> FactTable:
    return FactTable(user, "desk", (
        Fact("F1", FactKind.ITEM_TITLE, 'The recommended item is "Oak Desk".', "Oak Desk", item_id="desk", attribute="title"),
        Fact("F2", FactKind.HISTORY_ITEM, 'You bought "Desk Phone".', "Desk Phone", history_item_id="phone", event=EventKind.PURCHASE, position=1),
        Fact("F3", FactKind.BOUGHT_TOGETHER, f'{count} other shoppers who bought "Desk Phone" went on to buy it.', str(count),
             item_id="desk", history_item_id="phone", event=EventKind.PURCHASE, count=count),
    ))


def _written(table: FactTable) -> Explanation:
    text = f'Because you bought "Desk Phone": {table.facts[2].count} other shoppers who bought it went on to buy this.'
    return Explanation(text, ExplanationSource.LLM, True, table.facts[1:], "shopper.v3", "smollm2+lora", (Attempt("{...}", text, True, "ok"),))


def test_an_explanation_written_for_one_shopper_is_read_back_whole_for_another_with_the_same_evidence_after_a_restart(tmp_path):
    url = f"sqlite:///{tmp_path / 'whyrec.sqlite3'}"
    first = ExplanationCache(store=ExplanationStore(create_engine(url)))
    shown = _written(_table("u1"))
    first.put(cache_key(_table("u1"), "shopper.v3", "m@abc"), shown, "desk")

    restarted = ExplanationCache(store=ExplanationStore(create_engine(url)))
    found = restarted.get(cache_key(_table("u2"), "shopper.v3", "m@abc"))
    assert found == shown
    assert restarted.stats()["store_hits"] == 1 and restarted.get(cache_key(_table("u2"), "shopper.v3", "m@abc")) == shown
    assert restarted.stats()["hits"] == 1  # the second lookup is answered from memory


def test_other_evidence_another_template_or_another_adapter_is_not_the_same_explanation(tmp_path):
    cache = ExplanationCache(store=ExplanationStore(create_engine(f"sqlite:///{tmp_path / 'e.sqlite3'}")))
    cache.put(cache_key(_table("u1"), "shopper.v3", "m@abc"), _written(_table("u1")), "desk")
    for key in (cache_key(_table("u1", count=4), "shopper.v3", "m@abc"), cache_key(_table("u1"), "shopper.v2", "m@abc"), cache_key(_table("u1"), "shopper.v3", "m@def")):
        assert cache.get(key) is None
    assert cache.stats()["misses"] == 3


def test_two_replicas_writing_the_same_key_keep_one_row(tmp_path):
    url = f"sqlite:///{tmp_path / 'e.sqlite3'}"
    replicas = [ExplanationStore(create_engine(url)) for _ in range(2)]
    key = cache_key(_table("u1"), "shopper.v3", "m")
    for store in replicas:
        store.put(key, "desk", "shopper.v3", "m", _written(_table("u1")))
    assert replicas[0].count() == 1 and replicas[1].get(key) is not None


def test_a_template_kept_because_the_models_answers_failed_round_trips_with_its_reason(tmp_path):
    store = ExplanationStore(create_engine(f"sqlite:///{tmp_path / 'e.sqlite3'}"))
    table = _table("u1")
    fallback = Explanation('Because you bought "Desk Phone".', ExplanationSource.TEMPLATE, False, table.facts[1:2], "shopper.v3", "m",
                           (Attempt("raw", "It is red.", False, "not in the facts: red"),), FallbackReason.UNGROUNDED)
    store.put("k", "desk", "shopper.v3", "m", fallback)
    assert store.get("k") == fallback


def test_a_database_that_does_not_answer_costs_a_generation_not_the_request(tmp_path):
    folder = tmp_path / "gone"
    store = ExplanationStore(create_engine(f"sqlite:///{folder / 'missing' / 'e.sqlite3'}"))  # the folder does not exist
    cache = ExplanationCache(store=store)
    cache.put("k", _written(_table("u1")), "desk")
    assert ExplanationCache(store=store).get("k") is None
