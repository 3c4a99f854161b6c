"""`whyrec catalog add|remove`: record a live catalog change in the service's database. Running
`whyrec serve` replicas on that database apply it within seconds (whyrec.service.catalog_changes),
and a service started later replays it; nothing is retrained."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Optional

import typer
from pydantic import ValidationError

from whyrec.cli.app import DataOption, JsonOption, _settings, app
from whyrec.core.errors import UnknownItem, WhyrecError

catalog_app = typer.Typer(help="Add and remove catalog items while the shop runs (no retraining).", no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")

DatabaseUrlOption = typer.Option(None, "--database-url", help="The running service's database (SQLAlchemy URL). Default: $WHYREC_DATABASE_URL, else the local SQLite store.")


@catalog_app.command("add")
def add(
    item_id: str = typer.Option(..., "--id", help="The new item's id."),
    title: str = typer.Option(..., "--title", help="Its title."),
    brand: Optional[str] = typer.Option(None, "--brand", help="Its brand."),
    categories: Optional[list[str]] = typer.Option(None, "--category", help="A category, broadest first; repeat for the path (--category Office --category Paper)."),
    description: str = typer.Option("", "--description", help="The seller's description."),
    price: Optional[float] = typer.Option(None, "--price", help="Its price."),
    data: Optional[Path] = DataOption,
    database_url: Optional[str] = DatabaseUrlOption,
    as_json: bool = JsonOption,
):
    """Add an item: a retrieval candidate, found by its text, as soon as the service picks the change up.

    Co-occurrence and the sequence model learn it at the next `whyrec train` (with the item in the data). A removed item may be added back."""
    from whyrec.core.protocol import CatalogAction, CatalogItem

    try:
        item = CatalogItem(item_id=item_id, title=title, brand=brand, categories=categories or [], description=description, price=price)
    except ValidationError as exc:
        raise WhyrecError("; ".join(f"--{_OPTION.get(str(e['loc'][0]), e['loc'][0])}: {e['msg']}" for e in exc.errors())) from None
    _print(_record(data, database_url, CatalogAction.ADD, item.item_id, item), as_json)


@catalog_app.command("remove")
def remove(
    item_id: str = typer.Argument(..., help="The item to remove."),
    data: Optional[Path] = DataOption,
    database_url: Optional[str] = DatabaseUrlOption,
    as_json: bool = JsonOption,
):
    """Remove an item: never a candidate, shown or explained again once the service picks the change up (it may stay in shoppers' histories)."""
    from whyrec.core.protocol import CatalogAction

    _print(_record(data, database_url, CatalogAction.REMOVE, item_id, None), as_json)


_OPTION = {"item_id": "id", "categories": "category"}  # CatalogItem's field -> the option that sets it


def _record(data: Optional[Path], database_url: Optional[str], action, item_id: str, item):
    """Record the change after checking it against the data with the changes recorded so far
    replayed, as the services see it: a one-line error, and nothing recorded, if it cannot apply."""
    from whyrec.core.protocol import CatalogAction
    from whyrec.pipeline import ItemAlreadyListed, ItemRemoved, load_data
    from whyrec.service.catalog_changes import CatalogChangeLog, replayed
    from whyrec.service.store import Store

    settings = _settings(data, database_url=database_url)
    catalog = load_data(settings)
    store = Store(settings.resolved_database_url())
    try:
        log = CatalogChangeLog(store.engine)
        listed, removed = replayed(catalog.items, log.changes())
        if action is CatalogAction.ADD and item_id in listed:
            raise ItemAlreadyListed(item_id)
        if action is CatalogAction.REMOVE and item_id not in listed:
            raise ItemRemoved(item_id) if item_id in removed else UnknownItem(item_id)
        return log.record(action, item_id, item, f"cli:{_operator()}")
    finally:
        store.close()


def _print(change, as_json: bool) -> None:
    if as_json:
        print(change.model_dump_json(indent=2))
        return
    print(f"recorded change {change.change_id}: {change.action.value} item '{change.item_id}' by {change.staff_user} "
          f"at {change.created_at:%Y-%m-%d %H:%M:%S} UTC; running services apply it within seconds")


def _operator() -> str:
    """Who ran the command, for the record: the login name, when the system knows one."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
