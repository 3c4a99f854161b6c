"""Properties that must hold for every input, checked with hypothesis: the loaders either load a
consistent catalog or raise the project's DataError naming the file (never another exception), and
the grounding check passes text built only from the facts and fails text with anything added.
Example counts are kept small so the whole file runs in seconds in CI."""

import json
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from whyrec.core.catalog import Catalog, EventKind, Item
from whyrec.core.errors import DataError
from whyrec.core.loaders import load_catalog
from whyrec.core.schema import Attribution, Evidence, FactKind, RankedItem
from whyrec.explainer import (
    build_fact_table,
    check_reason,
    checked_template,
    cold_start_fact_table,
    template_sentence,
)
from whyrec.explainer.grounding import CONNECTIVES, check_grounding
from whyrec.retrieval.popularity import PopularItems

FEW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@contextmanager
def _folder(files: dict[str, bytes]):
    # A fresh folder per example (pytest's tmp_path is one folder for all of hypothesis' examples).
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        for file_name, content in files.items():
            (folder / file_name).write_bytes(content)
        yield folder


def _load_or_data_error(files: dict[str, bytes]) -> Catalog | DataError:
    with _folder(files) as folder:
        try:
            catalog = load_catalog(folder)
        except DataError as error:
            assert any(name in str(error) for name in files) or str(folder) in str(error), str(error)
            return error
    # What loaded is whole and consistent: every event's item exists, every item has a title.
    assert all(e.item_id in catalog.items for e in catalog.interactions)
    assert all(item.title.strip() for item in catalog.items.values())
    return catalog


# ---- loaders: the Amazon format ----

_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
_ids = st.integers(0, 5).map(str) | st.text(max_size=6)
# Close to a real record, each field sometimes of the wrong type.
_item_record = st.fixed_dictionaries({}, optional={
    "title": st.text(max_size=30) | _json,
    "brand": st.text(max_size=10) | _json,
    "description": st.text(max_size=30) | _json,
    "categories": st.text(max_size=30) | st.lists(st.text(max_size=10), max_size=3) | _json,
})
_amazon_items = st.dictionaries(_ids, _item_record | _json, max_size=5) | _json
_amazon_inter = st.dictionaries(_ids, st.lists(st.integers(-1, 6) | _ids | _json, max_size=5) | _json, max_size=4) | _json


@FEW
@given(items=_amazon_items, inter=_amazon_inter)
def test_amazon_files_of_any_json_load_whole_or_raise_a_data_error(items, inter):
    _load_or_data_error({"Shop.item.json": json.dumps(items).encode(), "Shop.inter.json": json.dumps(inter).encode()})


@FEW
@given(items=st.binary(max_size=60), inter=st.binary(max_size=60))
@example(items=b'{"1": {"title": "Caf\xe9 mug"}}', inter=b'{"u": [1]}')  # Latin-1, not UTF-8
@example(items=b"[" * 100_000, inter=b'{"u": [1]}')  # nested deeper than the JSON parser recurses
@example(items=b'{"1": {"title": "\\ud800"}}', inter=b'{"u": [1]}')  # a lone surrogate escape
def test_amazon_files_of_any_bytes_load_whole_or_raise_a_data_error(items, inter):
    _load_or_data_error({"Shop.item.json": items, "Shop.inter.json": inter})


def test_a_non_utf8_data_file_names_the_file_and_the_byte():
    outcome = _load_or_data_error({"Shop.item.json": b'{"1": {"title": "Caf\xe9 mug"}}', "Shop.inter.json": b'{"u": [1]}'})
    assert isinstance(outcome, DataError) and "Shop.item.json" in str(outcome) and "not UTF-8" in str(outcome) and "byte 20 (0xe9)" in str(outcome)


# ---- loaders: the generic format ----

_generic_interaction = st.fixed_dictionaries({"user_id": _ids | _json, "item_id": st.sampled_from(["a", "b", "zz"]) | _json}, optional={
    "kind": st.sampled_from([k.value for k in EventKind]) | _json,
    "timestamp": st.integers() | st.floats() | st.text(max_size=25) | st.datetimes().map(lambda d: d.isoformat()) | _json,
})
_generic_item = st.fixed_dictionaries({"item_id": st.sampled_from(["a", "b"]) | _json, "title": st.text(max_size=20) | _json}, optional={
    "price": st.floats() | st.integers() | st.text(max_size=8) | _json,
    "categories": st.lists(st.text(max_size=8), max_size=3) | _json,
    "attributes": st.dictionaries(st.text(max_size=5), _scalars, max_size=2) | _json,
})


def _jsonl(records) -> bytes:
    return "\n".join(json.dumps(r) for r in records).encode()


@FEW
@given(items=st.lists(_generic_item, max_size=3), events=st.lists(_generic_interaction, max_size=3))
@example(items=[{"item_id": "a", "title": "A"}], events=[{"user_id": "u", "item_id": "a", "timestamp": 1e300}])  # beyond any date
@example(items=[{"item_id": "a", "title": "A"}], events=[{"user_id": "u", "item_id": "a", "timestamp": "nan"}])
@example(items=[{"item_id": "a", "title": "A"}], events=[{"user_id": "u", "item_id": "a", "timestamp": -1e18}])
@example(items=[{"item_id": "a", "title": "A"}], events=[{"user_id": "u", "item_id": "a", "timestamp": "0001-01-02T00:00:00+00:00"}])
def test_generic_files_of_any_records_load_whole_or_raise_a_data_error(items, events):
    catalog = _load_or_data_error({"items.jsonl": _jsonl(items), "interactions.jsonl": _jsonl(events)})
    if isinstance(catalog, Catalog):  # what loaded can also be counted for cold-start shoppers
        PopularItems(catalog.interactions).pick(3)


# ---- the grounding check ----

# Product-name words as sellers write them. Praise words are left out: the check refuses praise
# outside a quoted product name, so a praising name is not "built only from facts".
_PRAISE = {"best", "greatest", "perfect", "amazing", "awesome", "incredible", "excellent", "fantastic", "superb", "outstanding", "unbeatable", "guaranteed", "finest", "ultimate", "unmatched"}
_word = st.from_regex(r"[A-Z][a-z]{2,8}|[0-9]{1,3}", fullmatch=True).filter(lambda w: w.lower() not in _PRAISE)
_name = st.lists(_word, min_size=1, max_size=4).map(" ".join)
_category = st.lists(_word, min_size=1, max_size=2).map(" ".join)


@st.composite
def _item(draw, item_id: str, brand=None):
    brand = brand if brand is not None else draw(st.none() | _word)
    return Item(item_id, draw(_name), brand, tuple(draw(st.lists(_category, max_size=3))))


@st.composite
def _history_table(draw, history_items: int | None = None):
    """A fact table as the pipeline builds it: the item, one or two history items that raised its
    score, each sharing its brand or category or not, and other shoppers' counts between them."""
    item = draw(_item("i1"))
    history, evidence, attributions = [], [], []
    for n in range(history_items or draw(st.integers(1, 2))):
        h = draw(_item(f"h{n + 1}", brand=item.brand if draw(st.booleans()) and item.brand else None))
        if draw(st.booleans()):  # often one category path shared with the item
            h = Item(h.item_id, h.title, h.brand, item.categories)
        history.append((h, draw(st.sampled_from(list(EventKind)))))
        bought = draw(st.integers(0, 40))
        evidence.append(Evidence(h.item_id, "i1", bought, bought + draw(st.integers(0, 40)), draw(st.none() | st.integers(1, 10))))
    rank = draw(st.integers(1, 50))
    for n, (h, _) in enumerate(history):
        attributions.append(Attribution(h.item_id, draw(st.floats(0.01, 5)), draw(st.none() | st.integers(rank + 1, 200)) if n == 0 else None))
    attributions.sort(key=lambda a: -a.contribution)
    ranked = RankedItem("i1", rank, 0.5, 1.0, ("h1",), tuple(attributions), candidates_scored=200)
    return build_fact_table("u1", item, ranked, history, evidence)


@st.composite
def _cold_start_table(draw):
    item = draw(_item("i1"))
    shoppers = draw(st.integers(1, 1000))
    first_seen = draw(st.none() | st.dates().map(str))
    return cold_start_fact_table("u1", item, RankedItem("i1", draw(st.integers(1, 50)), float(shoppers), 0.0), shoppers, shoppers + draw(st.integers(0, 1000)), first_seen)


def _fact_text(table) -> str:
    return " ".join(f"{f.text} {f.value}" for f in table.facts)


@FEW
@given(table=_history_table() | _cold_start_table())
def test_the_template_sentence_built_from_the_facts_always_passes_the_check(table):
    text, used = template_sentence(table)
    verdict = check_grounding(text, table)
    assert verdict.passed, (text, verdict.reason, table)
    assert used and all(f in table.facts for f in used)


@FEW
@given(table=_history_table() | _cold_start_table(), number=st.integers(0, 10**7), where=st.sampled_from(["start", "end"]))
def test_a_number_that_is_in_no_fact_fails_the_check(table, number, where):
    text, _ = template_sentence(table)
    assume(str(number) not in re.findall(r"\d+", _fact_text(table)))
    changed = f"{number} shoppers: {text}" if where == "start" else f"{text.rstrip('.')}, {number} of them."
    verdict = check_grounding(changed, table)
    assert not verdict.passed and str(number) in verdict.unsupported, (changed, verdict)


@FEW
@given(table=_history_table() | _cold_start_table(), brand=st.from_regex(r"Zq[a-z]{2,6}[a-rt-z]", fullmatch=True))
def test_a_brand_that_is_in_no_fact_fails_the_check(table, brand):
    text, _ = template_sentence(table)
    assume("zq" not in _fact_text(table).lower())
    verdict = check_grounding(f"{text.rstrip('.')}, made by {brand}.", table)
    assert not verdict.passed and brand.lower() in verdict.unsupported, verdict


@FEW
@given(table=_history_table() | _cold_start_table(), text=st.text(max_size=80))
def test_any_text_gets_a_verdict_and_a_passing_text_uses_only_fact_words(table, text):
    verdict = check_grounding(text, table)
    if verdict.passed:
        fact_words = set(re.findall(r"[a-z0-9]+", _fact_text(table).lower())) | CONNECTIVES
        for word in re.findall(r"[a-z]+", text.lower()):
            assert any(w.startswith(word[:3]) for w in fact_words), (word, text)


_VERBS = {EventKind.PURCHASE: "bought", EventKind.VIEW: "looked at", EventKind.CLICK: "clicked on", EventKind.CART: "added to your cart"}


def _splices(table):
    """Each relation of one history item told of another history item, the ways a model or an old
    template would write it; only where no fact makes it true of that other item."""
    history = [f for f in table.facts if f.kind is FactKind.HISTORY_ITEM]
    for a in history:
        verb, name = _VERBS[a.event], a.value
        for r in table.facts:
            if r.history_item_id in (None, a.history_item_id) or r.kind is FactKind.HISTORY_ITEM:
                continue
            if any(f.history_item_id == a.history_item_id and f.value.lower() == r.value.lower() for f in table.facts if f.kind is r.kind or r.kind in (FactKind.SHARED_BRAND, FactKind.SHARED_CATEGORY, FactKind.SHARED_USE) and f.kind is not FactKind.HISTORY_ITEM):
                continue  # true of A as well (a brand that is also A's category reads either way after "another")
            if r.kind is FactKind.SHARED_BRAND:
                yield f'Because you {verb} "{name}", another {r.value} product.'
                yield f'Like "{name}", which you {verb}, it is made by {r.value}.'
            elif r.kind is FactKind.SHARED_CATEGORY and r.value.lower() not in name.lower():
                yield f'Because you {verb} "{name}", something else in {r.value}.'
                yield f'Like "{name}", which you {verb}, it is in {r.value}.'
            elif r.kind in (FactKind.BOUGHT_TOGETHER, FactKind.VIEWED_TOGETHER) and not any(
                f.history_item_id == a.history_item_id and f.kind is r.kind and f.count == r.count for f in table.facts
            ):
                did = "bought it went on to buy" if r.kind is FactKind.BOUGHT_TOGETHER else "looked at it went on to look at"
                yield f'Because you {verb} "{name}": {r.count} other shoppers who {did} this.'


@FEW
@given(table=_history_table(history_items=2))
def test_every_splice_of_a_relation_onto_another_history_item_is_rejected(table):
    names = [f.value.lower() for f in table.facts if f.kind is FactKind.HISTORY_ITEM]
    assume(len(set(names)) == len(names) and not any(a in b for a in names for b in names if a != b))  # two items the words can tell apart
    for text in _splices(table):
        verdict = check_grounding(text, table)
        assert not verdict.passed, (text, table)


@FEW
@given(table=_history_table() | _cold_start_table())
def test_the_shown_deterministic_reason_is_never_empty_and_always_passes(table):
    text, used = checked_template(table)
    assert text and check_grounding(text, table).passed and text == template_sentence(table)[0], (text, table)
    assert check_reason(text, table).passed, (text, check_reason(text, table).reason)  # it gives the table's reason
