"""Staff changes to the catalog while the shop runs (`POST/DELETE /api/catalog/items`, `whyrec
catalog add|remove`), kept in the service's database: each change is a row, applied to the
recommender at once by the process that takes it, replayed when a service starts (a restart keeps
it), and picked up by every other `whyrec serve` replica within POLL_S seconds of its next request
(one cheap query). Nothing is retrained: see `Recommender.add_item` and `remove_item`."""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Iterable, Iterator

from sqlalchemy import DateTime, Engine, Integer, String, Text, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from whyrec.core.errors import WhyrecError
from whyrec.core.protocol import CatalogAction, CatalogChange, CatalogItem
from whyrec.pipeline import Recommender
from whyrec.service.store import DATABASE_DOWN, DatabaseUnavailable, utc

POLL_S = 2.0  # how stale a replica's catalog may be: it looks for others' changes at most this often

class _Base(DeclarativeBase):
    pass


class _CatalogChangeRow(_Base):
    __tablename__ = "catalog_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    action: Mapped[str] = mapped_column(String(10))
    item_id: Mapped[str] = mapped_column(String(200))
    item: Mapped[str | None] = mapped_column(Text, nullable=True)  # CatalogItem as JSON, for an addition
    staff_user: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CatalogChangeLog:
    """The changes, oldest first, in their own table on a store's engine (created on first use)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._table_ready = False

    def record(self, action: CatalogAction, item_id: str, item: CatalogItem | None, staff_user: str) -> CatalogChange:
        row = _CatalogChangeRow(
            action=action.value, item_id=item_id, item=item.model_dump_json() if item else None, staff_user=staff_user, created_at=datetime.now(timezone.utc)
        )
        with self._database("recording a catalog change"), Session(self.engine) as session, session.begin():
            session.add(row)
            session.flush()  # assigns the id
            return _change(row)

    def signature(self) -> tuple[int, int]:
        """(how many changes, the last id): unchanged means nothing new to read."""
        with self._database("reading the catalog changes"), Session(self.engine) as session:
            count, last = session.execute(select(func.count(), func.max(_CatalogChangeRow.id))).one()
        return count, last or 0

    def changes(self) -> list[CatalogChange]:
        with self._database("reading the catalog changes"), Session(self.engine) as session:
            return [_change(row) for row in session.scalars(select(_CatalogChangeRow).order_by(_CatalogChangeRow.id))]

    @contextmanager
    def _database(self, what: str) -> Iterator[None]:
        """Creates the table the first time the database answers; one that does not raises DatabaseUnavailable."""
        try:
            if not self._table_ready:
                _Base.metadata.create_all(self.engine)
                self._table_ready = True
            yield
        except DATABASE_DOWN as exc:
            url = self.engine.url.render_as_string(hide_password=True)
            raise DatabaseUnavailable(f"the database {url} is unavailable ({type(exc).__name__}); {what} needs it") from None


class LiveCatalog:
    """A recommender's catalog kept in step with the change log. A change applies the same way
    whoever reads it (idempotent), so replicas and restarts agree: an addition of a listed item
    and a removal of an item that is not listed change nothing."""

    def __init__(self, log: CatalogChangeLog, recommender: Recommender, poll_s: float = POLL_S):
        self.log = log
        self.recommender = recommender
        self.poll_s = poll_s
        # Ids, not the last id: PostgreSQL may commit a lower id after a higher one.
        self._applied: set[int] = set()
        self._seen: tuple[int, int] | None = None  # the log's signature when last read
        self._next_look = 0.0  # time.monotonic()
        self._lock = threading.Lock()  # one change or catch-up at a time in this process
        self._warned = False

    def catch_up(self) -> int:
        """Apply the changes recorded since the last look (by another replica, or `whyrec catalog`),
        looking at most once per poll_s; the number applied. Never fails a request: a database that
        does not answer, or a change that cannot apply, is warned about and looked at again later."""
        if time.monotonic() < self._next_look or not self._lock.acquire(blocking=False):
            return 0  # looked at recently, or another thread is looking now
        try:
            self._next_look = time.monotonic() + self.poll_s
            applied = self._apply_new()
            self._warned = False
            return applied
        except WhyrecError as exc:
            if not self._warned:
                self._warned = True
                print(f"whyrec: catalog changes not applied ({exc}); trying again on a later request", file=sys.stderr)
            return 0
        finally:
            self._lock.release()

    def add(self, item: CatalogItem, staff_user: str) -> CatalogChange:
        """Add the item now and record it. Raises ItemAlreadyListed, or DatabaseUnavailable, having changed nothing."""
        with self._lock:
            self._apply_new()  # whether the item is listed must count everyone's changes
            self.recommender.add_item(item.to_item())  # first: embedding it is what may fail
            try:
                change = self.log.record(CatalogAction.ADD, item.item_id, item, staff_user)
            except DatabaseUnavailable:
                self.recommender.remove_item(item.item_id)  # not recorded, so not live: a restart would not know it
                raise
            self._applied.add(change.change_id)
            return change

    def remove(self, item_id: str, staff_user: str) -> CatalogChange:
        """Record the removal and apply it. Raises UnknownItem (ItemRemoved when it is removed already), or DatabaseUnavailable, having changed nothing."""
        with self._lock:
            self._apply_new()
            self.recommender.check_listed(item_id)
            change = self.log.record(CatalogAction.REMOVE, item_id, None, staff_user)
            self.recommender.remove_item(item_id)
            self._applied.add(change.change_id)
            return change

    def _apply_new(self) -> int:
        signature = self.log.signature()
        if signature == self._seen:
            return 0
        new = [c for c in self.log.changes() if c.change_id not in self._applied]
        for change in new:
            if change.action is CatalogAction.ADD and not self.recommender.listed(change.item_id):
                self.recommender.add_item(change.item.to_item())
            elif change.action is CatalogAction.REMOVE and self.recommender.listed(change.item_id):
                self.recommender.remove_item(change.item_id)
            self._applied.add(change.change_id)
        self._seen = signature
        return len(new)


def replayed(item_ids: Iterable[str], changes: Iterable[CatalogChange]) -> tuple[set[str], set[str]]:
    """(listed, removed): the data's items with the recorded changes applied in order, as LiveCatalog applies them."""
    listed, removed = set(item_ids), set()
    for change in changes:
        if change.action is CatalogAction.ADD:
            listed.add(change.item_id)
            removed.discard(change.item_id)
        elif change.item_id in listed:
            listed.discard(change.item_id)
            removed.add(change.item_id)
    return listed, removed


def _change(row: _CatalogChangeRow) -> CatalogChange:
    return CatalogChange(
        change_id=row.id, action=CatalogAction(row.action), item_id=row.item_id, item=CatalogItem.model_validate_json(row.item) if row.item else None,
        staff_user=row.staff_user, created_at=utc(row.created_at),
    )
