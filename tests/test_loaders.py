import json

import pytest
from conftest import OFFICE, SCIENTIFIC

from whyrec.core.catalog import EventKind
from whyrec.core.config import Settings
from whyrec.core.errors import DataError
from whyrec.core.loaders import load_catalog
from whyrec.pipeline import data_folder


def test_amazon_office_loads_every_item_user_and_interaction():
    catalog = load_catalog(OFFICE)
    assert (len(catalog.items), len(catalog.users), len(catalog.interactions)) == (2420, 4905, 53258)


def test_amazon_scientific_loads_every_item_user_and_interaction():
    catalog = load_catalog(SCIENTIFIC)
    assert (len(catalog.items), len(catalog.users), len(catalog.interactions)) == (4344, 8317, 58492)


def test_amazon_html_entities_are_decoded():
    catalog = load_catalog(OFFICE)
    assert catalog.item("2").title.startswith("AT&T 210")
    assert not any("&amp;" in item.title or "&quot;" in item.title for item in catalog.items.values())


def test_amazon_categories_become_a_path():
    assert load_catalog(OFFICE).item("0").categories == ("Office Electronics", "Telephones & Accessories", "Cordless Telephones")


def test_amazon_sequence_keeps_the_file_order():
    raw = json.loads((OFFICE / "Office.inter.json").read_text())
    assert load_catalog(OFFICE).sequence("1") == [str(i) for i in raw["1"]]


def test_amazon_empty_title_gets_a_name_from_its_category():
    assert load_catalog(OFFICE).item("828").title == "Styluses item 828"


def test_bundled_sample_store_loads_with_kinds_times_prices_and_attributes():
    catalog = load_catalog(data_folder(Settings()))
    assert len(catalog.items) >= 40 and len(catalog.users) >= 30
    assert {e.kind for e in catalog.interactions} == set(EventKind)
    assert all(e.timestamp is not None for e in catalog.interactions)
    assert any(item.price is not None and item.attributes for item in catalog.items.values())


def _write(folder, name, text):
    (folder / name).write_text(text)
    return folder


def _generic(tmp_path, items, interactions, ext="jsonl"):
    if ext == "jsonl":
        _write(tmp_path, "items.jsonl", "\n".join(json.dumps(i) for i in items))
        _write(tmp_path, "interactions.jsonl", "\n".join(json.dumps(i) for i in interactions))
    return tmp_path


ITEMS = [
    {"item_id": "a", "title": "Desk lamp", "brand": "Lumo", "categories": ["Office", "Lighting"], "price": 20, "attributes": {"color": "black"}},
    {"item_id": "b", "title": "Notebook", "categories": ["Office", "Paper"]},
]
EVENTS = [
    {"user_id": "u1", "item_id": "a", "kind": "view", "timestamp": "2026-01-02T10:00:00Z"},
    {"user_id": "u1", "item_id": "b", "kind": "purchase", "timestamp": "2026-01-01T10:00:00Z"},
]


def test_generic_jsonl_orders_events_by_time():
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        catalog = load_catalog(_generic(Path(d), ITEMS, EVENTS))
    assert catalog.sequence("u1") == ["b", "a"]
    assert catalog.item("a").attributes == {"color": "black"} and catalog.item("a").price == 20.0


def test_generic_csv_reads_category_paths_and_extra_columns_as_attributes(tmp_path):
    _write(tmp_path, "items.csv", "item_id,title,brand,categories,price,color\na,Desk lamp,Lumo,Office > Lighting,19.5,black\nb,Notebook,,Office > Paper,,\n")
    _write(tmp_path, "interactions.csv", "user_id,item_id,kind\nu1,a,view\nu1,b,purchase\n")
    catalog = load_catalog(tmp_path)
    assert catalog.item("a").categories == ("Office", "Lighting")
    assert catalog.item("a").attributes == {"color": "black"}
    assert catalog.item("b").brand is None and catalog.item("b").price is None
    assert [e.kind for e in catalog.events("u1")] == [EventKind.VIEW, EventKind.PURCHASE]


def _error(folder) -> DataError:
    with pytest.raises(DataError) as info:
        load_catalog(folder)
    return info.value


def test_missing_item_id_names_file_row_and_field(tmp_path):
    error = _error(_generic(tmp_path, [ITEMS[0], {"title": "No id"}], EVENTS[:1]))
    assert (error.file.endswith("items.jsonl"), error.row, error.field) == (True, 2, "item_id")
    assert "items.jsonl, row 2, field 'item_id': missing" in str(error)


def test_unknown_item_in_an_interaction_names_the_item(tmp_path):
    error = _error(_generic(tmp_path, ITEMS, [*EVENTS, {"user_id": "u2", "item_id": "zzz"}]))
    assert error.file.endswith("interactions.jsonl") and error.row == 3 and error.field == "item_id"
    assert "unknown item 'zzz'" in str(error)


def test_wrong_type_names_the_field(tmp_path):
    error = _error(_generic(tmp_path, [{**ITEMS[0], "price": "cheap"}], EVENTS[:1]))
    assert error.field == "price" and "cheap" in str(error)


def test_unknown_event_kind_lists_the_allowed_kinds(tmp_path):
    error = _error(_generic(tmp_path, ITEMS, [{"user_id": "u1", "item_id": "a", "kind": "wishlist"}]))
    assert error.field == "kind" and "view, click, cart, purchase" in str(error)


def test_empty_file_is_an_error(tmp_path):
    _write(tmp_path, "items.jsonl", "")
    _write(tmp_path, "interactions.jsonl", "")
    error = _error(tmp_path)
    assert error.file.endswith("items.jsonl") and "empty" in str(error)


def test_invalid_json_line_names_the_line(tmp_path):
    _write(tmp_path, "items.jsonl", json.dumps(ITEMS[0]) + "\n{not json\n")
    _write(tmp_path, "interactions.jsonl", json.dumps(EVENTS[0]))
    error = _error(tmp_path)
    assert error.row == 2 and "invalid JSON" in str(error)


def test_amazon_unknown_item_names_user_and_position(tmp_path):
    _write(tmp_path, "X.item.json", json.dumps({"1": {"title": "Pen", "brand": "", "description": "", "categories": "Office"}}))
    _write(tmp_path, "X.inter.json", json.dumps({"7": [1, 99]}))
    error = _error(tmp_path)
    assert (error.row, error.field) == ("user 7", "[1]") and "unknown item '99'" in str(error)


def test_amazon_wrong_type_names_item_and_field(tmp_path):
    _write(tmp_path, "X.item.json", json.dumps({"1": {"title": ["Pen"], "categories": "Office"}}))
    _write(tmp_path, "X.inter.json", json.dumps({"7": [1]}))
    error = _error(tmp_path)
    assert (error.row, error.field) == ("item 1", "title")


def test_folder_without_data_says_what_was_expected(tmp_path):
    assert "X.item.json" in str(_error(tmp_path))


def test_mixed_timestamps_are_rejected(tmp_path):
    error = _error(_generic(tmp_path, ITEMS, [EVENTS[0], {"user_id": "u1", "item_id": "b"}]))
    assert error.row == 2 and error.field == "timestamp"
