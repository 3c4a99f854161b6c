"""Loaders for the two data formats whyrec reads. Each returns a whole Catalog or raises DataError.

Amazon format (as in ../shared/data/amazon-office): a folder with ``X.item.json`` (item id ->
{title, description, brand, categories}) and ``X.inter.json`` (user id -> item ids in time order).
The files carry no event kinds or times; every event is read as a purchase.

Generic format (for a shop's own data): a folder with ``items.jsonl`` or ``items.csv`` and
``interactions.jsonl`` or ``interactions.csv``; the fields are documented in the README
("Bring your own data").
"""

from __future__ import annotations

import csv
import html
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from whyrec.core.catalog import Catalog, EventKind, Interaction, Item
from whyrec.core.errors import DataError

ITEM_FIELDS = {"item_id", "title", "brand", "categories", "description", "price", "attributes"}
INTERACTION_FIELDS = {"user_id", "item_id", "kind", "timestamp"}
CSV_CATEGORY_SEPARATOR = ">"


def load_catalog(folder: str | Path) -> Catalog:
    """Load whichever supported format the folder holds."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, "not a folder (expected a folder with items and interactions files)")
    amazon_items = sorted(folder.glob("*.item.json"))
    if amazon_items:
        return load_amazon(folder)
    if any((folder / f"items.{ext}").exists() for ext in ("jsonl", "csv")):
        return load_generic(folder)
    raise DataError(
        folder,
        "no data found: expected X.item.json + X.inter.json (Amazon format) "
        "or items.jsonl|items.csv + interactions.jsonl|interactions.csv (generic format)",
    )


# --- Amazon ---------------------------------------------------------------------------------


def load_amazon(folder: str | Path) -> Catalog:
    folder = Path(folder)
    item_files = sorted(folder.glob("*.item.json"))
    if len(item_files) != 1:
        raise DataError(folder, f"expected exactly one *.item.json file, found {len(item_files)}")
    item_file = item_files[0]
    stem = item_file.name[: -len(".item.json")]
    inter_file = folder / f"{stem}.inter.json"
    if not inter_file.exists():
        raise DataError(inter_file, "missing: the interactions file beside the items file")

    raw_items = _read_json_object(item_file)
    items: dict[str, Item] = {}
    for item_id, record in raw_items.items():
        if not isinstance(record, dict):
            raise DataError(item_file, f"expected an object, got {type(record).__name__}", row=f"item {item_id}")
        categories = _amazon_categories(item_file, item_id, record.get("categories"))
        if "title" not in record:
            raise DataError(item_file, "missing", row=f"item {item_id}", field="title")
        # A few real Amazon records have an empty title; name them by category so they stay usable.
        title = _amazon_text(item_file, item_id, record, "title") or f"{categories[-1] if categories else 'Untitled'} item {item_id}"
        items[item_id] = Item(
            item_id=item_id,
            title=title,
            brand=_amazon_text(item_file, item_id, record, "brand") or None,
            categories=categories,
            description=_amazon_text(item_file, item_id, record, "description"),
        )

    raw_inter = _read_json_object(inter_file)
    interactions: list[Interaction] = []
    for user_id, sequence in raw_inter.items():
        if not isinstance(sequence, list):
            raise DataError(inter_file, f"expected a list of item ids, got {type(sequence).__name__}", row=f"user {user_id}")
        if not sequence:
            raise DataError(inter_file, "empty item list", row=f"user {user_id}")
        for position, raw_id in enumerate(sequence):
            if isinstance(raw_id, bool) or not isinstance(raw_id, (int, str)):
                raise DataError(inter_file, f"item id must be an integer or string, got {raw_id!r}", row=f"user {user_id}", field=f"[{position}]")
            item_id = str(raw_id)
            if item_id not in items:
                raise DataError(inter_file, f"unknown item '{item_id}' (not in {item_file.name})", row=f"user {user_id}", field=f"[{position}]")
            interactions.append(Interaction(user_id=str(user_id), item_id=item_id, kind=EventKind.PURCHASE))
    return Catalog(stem, items, interactions)


def _read_json_object(path: Path) -> dict[str, Any]:
    text = _read_text(path)
    if not text.strip():
        raise DataError(path, "file is empty")
    data = _parse_json(path, text)
    if not isinstance(data, dict):
        raise DataError(path, f"expected a JSON object at the top level, got {type(data).__name__}")
    if not data:
        raise DataError(path, "file holds no records")
    return data


def _amazon_text(path: Path, item_id: str, record: dict, field: str) -> str:
    value = record.get(field)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(path, f"expected a string, got {type(value).__name__}", row=f"item {item_id}", field=field)
    return _clean(value)


def _amazon_categories(path: Path, item_id: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        parts = value.split(",")
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        parts = value
    else:
        raise DataError(path, "expected a comma-separated string or a list of strings", row=f"item {item_id}", field="categories")
    return tuple(p for p in (_clean(p) for p in parts) if p)


def _clean(text: str) -> str:
    # Amazon metadata double-escapes some entities ("&amp;amp;"), so unescape until stable.
    previous = None
    while previous != text:
        previous, text = text, html.unescape(text)
    return " ".join(text.split())


# --- Generic --------------------------------------------------------------------------------


def load_generic(folder: str | Path) -> Catalog:
    folder = Path(folder)
    item_file = _pick(folder, "items")
    inter_file = _pick(folder, "interactions")

    items: dict[str, Item] = {}
    for row, record in _records(item_file):
        item = _generic_item(item_file, row, record)
        if item.item_id in items:
            raise DataError(item_file, f"duplicate item id '{item.item_id}'", row=row, field="item_id")
        items[item.item_id] = item

    events: list[tuple[int, Interaction]] = []
    for row, record in _records(inter_file):
        events.append((row, _generic_interaction(inter_file, row, record, items)))

    with_time = [e.timestamp is not None for _, e in events]
    if any(with_time) and not all(with_time):
        row = events[with_time.index(False)][0]
        raise DataError(inter_file, "timestamp missing here but present on other rows (give all or none)", row=row, field="timestamp")
    ordered = [e for _, e in events]
    if all(with_time):
        ordered.sort(key=lambda e: e.timestamp)  # stable: file order breaks ties
    return Catalog(folder.name, items, ordered)


def _pick(folder: Path, stem: str) -> Path:
    found = [folder / f"{stem}.{ext}" for ext in ("jsonl", "csv") if (folder / f"{stem}.{ext}").exists()]
    if not found:
        raise DataError(folder / f"{stem}.jsonl", f"missing: expected {stem}.jsonl or {stem}.csv")
    if len(found) > 1:
        raise DataError(folder, f"both {stem}.jsonl and {stem}.csv exist; keep one")
    return found[0]


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(path, f"not UTF-8 text: byte {exc.start} ({exc.object[exc.start]:#04x}) cannot be decoded; save the file as UTF-8") from None


def _parse_json(path: Path, text: str, row: int | None = None) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(path, f"invalid JSON: {exc.msg}", row=row if row is not None else f"line {exc.lineno}") from None
    except RecursionError:  # the parser recurses once per level of [ or {
        raise DataError(path, "invalid JSON: nested too deeply", row=row) from None


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, record). CSV values arrive as strings; JSONL values keep their JSON types."""
    text = _read_text(path)
    if not text.strip():
        raise DataError(path, "file is empty")
    count = 0
    if path.suffix == ".jsonl":
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            record = _parse_json(path, line, row=lineno)
            if not isinstance(record, dict):
                raise DataError(path, f"expected a JSON object, got {type(record).__name__}", row=lineno)
            count += 1
            yield lineno, record
    else:
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames:
            raise DataError(path, "no header row")
        for record in reader:
            lineno = reader.line_num
            if None in record:
                raise DataError(path, "more values than header columns", row=lineno)
            count += 1
            yield lineno, {k: v for k, v in record.items() if v not in ("", None)}
    if count == 0:
        raise DataError(path, "file holds a header but no records")


def _generic_item(path: Path, row: int, record: dict[str, Any]) -> Item:
    item_id = _id(path, row, record, "item_id")
    title = _string(path, row, record, "title", required=True)
    brand = _string(path, row, record, "brand") or None
    description = _string(path, row, record, "description")

    raw_categories = record.get("categories")
    if raw_categories is None:
        categories: tuple[str, ...] = ()
    elif isinstance(raw_categories, str):
        categories = tuple(c.strip() for c in raw_categories.split(CSV_CATEGORY_SEPARATOR) if c.strip())
    elif isinstance(raw_categories, list) and all(isinstance(c, str) for c in raw_categories):
        categories = tuple(c.strip() for c in raw_categories if c.strip())
    else:
        raise DataError(path, f"expected a list of strings or a '{CSV_CATEGORY_SEPARATOR}'-separated string", row=row, field="categories")

    price = record.get("price")
    if price is not None:
        if isinstance(price, str):
            try:
                price = float(price)
            except ValueError:
                raise DataError(path, f"expected a number, got {price!r}", row=row, field="price") from None
        if isinstance(price, bool) or not isinstance(price, (int, float)) or not math.isfinite(price) or price < 0:
            raise DataError(path, f"expected a non-negative number, got {price!r}", row=row, field="price")
        price = float(price)

    attributes = record.get("attributes", {})
    if path.suffix == ".csv":
        # In CSV every column that is not a known field is a free attribute.
        attributes = {k: v for k, v in record.items() if k not in ITEM_FIELDS}
    if not isinstance(attributes, dict):
        raise DataError(path, f"expected an object, got {type(attributes).__name__}", row=row, field="attributes")
    for key, value in attributes.items():
        if isinstance(value, (dict, list)) or value is None:
            raise DataError(path, "attribute values must be strings, numbers or booleans", row=row, field=f"attributes.{key}")
    return Item(item_id, title, brand, categories, description, price, dict(attributes))


def _generic_interaction(path: Path, row: int, record: dict[str, Any], items: dict[str, Item]) -> Interaction:
    user_id = _id(path, row, record, "user_id")
    item_id = _id(path, row, record, "item_id")
    if item_id not in items:
        raise DataError(path, f"unknown item '{item_id}' (not in the items file)", row=row, field="item_id")
    kind_value = record.get("kind", EventKind.PURCHASE.value)
    try:
        kind = EventKind(kind_value)
    except ValueError:
        allowed = ", ".join(k.value for k in EventKind)
        raise DataError(path, f"expected one of {allowed}, got {kind_value!r}", row=row, field="kind") from None
    return Interaction(user_id, item_id, kind, _timestamp(path, row, record.get("timestamp")))


def _id(path: Path, row: int, record: dict[str, Any], field: str) -> str:
    value = record.get(field)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(path, "missing", row=row, field=field)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(path, f"expected a string or integer id, got {type(value).__name__}", row=row, field=field)
    return str(value).strip()


def _string(path: Path, row: int, record: dict[str, Any], field: str, required: bool = False) -> str:
    value = record.get(field)
    if value is None:
        if required:
            raise DataError(path, "missing", row=row, field=field)
        return ""
    if not isinstance(value, str):
        raise DataError(path, f"expected a string, got {type(value).__name__}", row=row, field=field)
    value = " ".join(value.split())
    if required and not value:
        raise DataError(path, "empty", row=row, field=field)
    return value


def _timestamp(path: Path, row: int, value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _unix_seconds(path, row, value)
    if isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            pass
        else:
            return _unix_seconds(path, row, seconds)
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise DataError(path, f"expected ISO 8601 or Unix seconds, got {value!r}", row=row, field="timestamp") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    raise DataError(path, f"expected ISO 8601 or Unix seconds, got {value!r}", row=row, field="timestamp")


def _unix_seconds(path: Path, row: int, seconds: float) -> datetime:
    try:
        return datetime.fromtimestamp(seconds, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):  # NaN, or outside the years datetime can hold
        raise DataError(path, f"Unix seconds {seconds!r} is not a date between years 1 and 9999", row=row, field="timestamp") from None
