"""The impression log and the feedback store, through SQLAlchemy (a SQLite file by default, any
database URL in production). Every served slate is written whole, in one transaction, with what an
agent needs to answer "why did X appear for this shopper last Tuesday?" from the record: ranks,
scores, the fact table, the exact prompt, the prompt version, the model, the shown text, every raw
answer and the grounding verdict. Shopper events and feedback are kept here too and read back as the
overlay the recommender lays over the loaded history, and read back as shown slates with what the
shopper engaged with: the ranker's feedback training data."""

from __future__ import annotations

import sys
import threading
import uuid
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, create_engine, event, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, selectinload, sessionmaker

from whyrec.core.catalog import EventKind, Interaction
from whyrec.core.errors import WhyrecError
from whyrec.core.protocol import EventRecord, FeedbackKind, FeedbackRecord, ImpressionItemRecord, ImpressionRecord, impression_item
from whyrec.core.schema import RecommendedItem, ShopperOverlay, ShownSlate
from whyrec.service.spool import WriteQueue


class DatabaseUnavailable(WhyrecError):
    """The database cannot be reached (or the queue of writes waiting for it is full)."""


class UnknownImpression(WhyrecError):
    def __init__(self, impression_id: str):
        self.impression_id = impression_id
        super().__init__(f"unknown impression '{impression_id}': no served slate with this id in the store")


# ---- tables ----


class _Base(DeclarativeBase):
    pass


class _Impression(_Base):
    __tablename__ = "impressions"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    served_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    user_id: Mapped[str] = mapped_column(String(200), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    history: Mapped[list] = mapped_column(JSON)
    items: Mapped[list["_ImpressionItem"]] = relationship(order_by="_ImpressionItem.position", cascade="all, delete-orphan")


class _ImpressionItem(_Base):
    __tablename__ = "impression_items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    impression_id: Mapped[str] = mapped_column(ForeignKey("impressions.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    item_id: Mapped[str] = mapped_column(String(200), index=True)
    title: Mapped[str] = mapped_column(Text)
    rank: Mapped[int] = mapped_column(Integer)
    candidates_scored: Mapped[int] = mapped_column(Integer)
    retrieval_score: Mapped[float] = mapped_column(Float)
    ranker_score: Mapped[float] = mapped_column(Float)
    features: Mapped[dict] = mapped_column(JSON)
    attributions: Mapped[list] = mapped_column(JSON)
    fact_table: Mapped[list] = mapped_column(JSON)
    cited_fact_ids: Mapped[list] = mapped_column(JSON)
    prompt: Mapped[list] = mapped_column(JSON)
    prompt_version: Mapped[str] = mapped_column(String(100))
    model: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(16))
    grounded: Mapped[bool] = mapped_column(Boolean)
    attempts: Mapped[list] = mapped_column(JSON)


class _Event(_Base):
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    user_id: Mapped[str] = mapped_column(String(200), index=True)
    item_id: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))


class _Feedback(_Base):
    __tablename__ = "feedback"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    user_id: Mapped[str] = mapped_column(String(200), index=True)
    kind: Mapped[str] = mapped_column(String(24))
    item_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    impression_id: Mapped[str | None] = mapped_column(ForeignKey("impressions.id"), nullable=True)


def utc(value: datetime) -> datetime:
    """SQLite gives naive datetimes back; everything stored is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _as_utc(value: datetime) -> datetime:
    """A naive time is taken as UTC; SQLite compares the stored UTC wall-clock text."""
    return value.astimezone(timezone.utc).replace(tzinfo=None) if value.tzinfo else value


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Store:
    """One per process; thread-safe (a session per call).

    When the database is unavailable (any connection-level error of the driver), impressions,
    events and feedback are not lost: they go to a bounded queue mirrored in an append-only spool
    file (`spool`), and a background thread writes them, in order, once the database answers again
    (a restart replays the spool). While anything is queued, new writes join the queue so they land
    in order (feedback after the impression it is about). Reads that need the database (impression
    lookups) raise DatabaseUnavailable; a shopper's overlay falls back to their queued records."""

    def __init__(self, url: str, spool: Path | None = None, max_queued: int = 10_000, retry_s: float = 2.0):
        self.url = url
        self.engine = _engine(url)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self._writing = sessionmaker(self.engine.execution_options(**{_WRITE: True}), expire_on_commit=False)
        self._queue = WriteQueue(spool, max_queued)
        self._retry_s = retry_s
        self._lock = threading.Lock()  # one writer of the queue to the database at a time
        self._flusher: threading.Thread | None = None
        self._stop = threading.Event()
        self._schema_ready = False
        self.rejected = 0  # queued records the database refused on replay (e.g. feedback on an unknown impression)
        try:
            self._ensure_schema()
        except DATABASE_DOWN as exc:
            _warn(f"database {self.display_url} unavailable at start ({_short(exc)}): writes are queued until it answers")
        if len(self._queue):
            self._start_flusher()

    @property
    def display_url(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    @property
    def queued(self) -> int:
        """Writes waiting for the database."""
        return len(self._queue)

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")

    def flush(self) -> int:
        """Write the queued records now, oldest first; returns how many were written. Stops at the
        first connection error (they stay queued); a record the database refuses is dropped."""
        written = 0
        with self._lock:
            self._ensure_schema()
            while (entry := self._queue.peek()) is not None:
                try:
                    _WRITERS[entry.kind](self, entry.record)
                except DATABASE_DOWN:
                    raise
                except (DBAPIError, WhyrecError) as exc:
                    self.rejected += 1
                    _warn(f"queued {entry.kind} {entry.record} refused by the database ({_short(exc)}); dropped")
                self._queue.pop(entry)
                written += 1
        return written

    def close(self) -> None:
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join(timeout=5)
        self._queue.close()
        self.engine.dispose()

    # ---- impressions ----

    def log_impression(
        self,
        user_id: str,
        kind: str,
        history: list[str],
        items: list[RecommendedItem],
        prompts: list[list[tuple[str, str]]],
        feature_names: tuple[str, ...],
        served_at: datetime | None = None,
    ) -> ImpressionRecord:
        """Write one served slate (or one explained item) and everything behind it, all or nothing."""
        if len(prompts) != len(items):
            raise ValueError(f"{len(items)} items but {len(prompts)} prompts")
        row = _Impression(id=uuid.uuid4().hex, served_at=served_at or _now(), user_id=user_id, kind=kind, history=list(history))
        for position, (entry, prompt) in enumerate(zip(items, prompts), start=1):
            row.items.append(_item_row(position, entry, prompt, feature_names))
        record = _impression_record(row)
        self._write("impression", record, lambda: self._add(row))
        return record

    def impression(self, impression_id: str) -> ImpressionRecord:
        queued = self._queue.find("impression", lambda r: r.impression_id == impression_id)
        if queued:
            return queued[0]
        with self._reading("this impression lookup"), self._session() as session:
            row = session.get(_Impression, impression_id, options=[selectinload(_Impression.items)])
            if row is None:
                raise UnknownImpression(impression_id)
            return _impression_record(row)

    def impressions(
        self,
        user_id: str | None = None,
        item_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
    ) -> list[ImpressionRecord]:
        """Newest first. With `item_id`, only impressions that showed that item."""
        query = select(_Impression).options(selectinload(_Impression.items)).order_by(_Impression.served_at.desc()).limit(limit)
        if user_id is not None:
            query = query.where(_Impression.user_id == user_id)
        if item_id is not None:
            query = query.where(_Impression.id.in_(select(_ImpressionItem.impression_id).where(_ImpressionItem.item_id == item_id)))
        if since is not None:
            query = query.where(_Impression.served_at >= _as_utc(since))
        if until is not None:
            query = query.where(_Impression.served_at <= _as_utc(until))
        with self._reading("impression lookups"), self._session() as session:
            return [_impression_record(row) for row in session.scalars(query)]

    def shown_slates(self, since: datetime | None = None, window: timedelta = timedelta(days=1), now: datetime | None = None) -> list[ShownSlate]:
        """Served slates (oldest first) whose engagement `window` has closed, each with the shown items
        the shopper then clicked, carted or bought within the window. A slate still inside its window
        is left out: its skipped items may yet be engaged with."""
        settled = (now or _now()) - window
        query = (
            select(_Impression)
            .where(_Impression.kind == "slate", _Impression.served_at <= _as_utc(settled))
            .order_by(_Impression.served_at)
        )
        if since is not None:
            query = query.where(_Impression.served_at >= _as_utc(since))
        engaging = [EventKind.CLICK.value, EventKind.CART.value, EventKind.PURCHASE.value]
        with self._reading("reads of shown slates"), self._session() as session:
            rows = session.scalars(query).all()
            if not rows:
                return []
            # Only the shown item ids: the items' fact tables and prompts are the log's bulk.
            shown: dict[str, list[str]] = {}
            for impression_id, item_id in session.execute(
                select(_ImpressionItem.impression_id, _ImpressionItem.item_id)
                .where(_ImpressionItem.impression_id.in_(query.with_only_columns(_Impression.id).order_by(None)))
                .order_by(_ImpressionItem.impression_id, _ImpressionItem.position)
            ):
                shown.setdefault(impression_id, []).append(item_id)
            events = session.scalars(
                select(_Event).where(
                    _Event.user_id.in_({r.user_id for r in rows}),
                    _Event.kind.in_(engaging),
                    _Event.created_at >= _as_utc(utc(rows[0].served_at)),
                    _Event.created_at <= _as_utc(utc(rows[-1].served_at) + window),
                )
            ).all()
        by_user: dict[str, list[tuple[datetime, str]]] = {}
        for e in events:
            by_user.setdefault(e.user_id, []).append((utc(e.created_at), e.item_id))
        slates = []
        for row in rows:
            served_at, items = utc(row.served_at), tuple(shown.get(row.id, ()))
            engaged = frozenset(
                item for at, item in by_user.get(row.user_id, []) if served_at <= at <= served_at + window and item in items
            )
            slates.append(ShownSlate(row.user_id, tuple(row.history), items, engaged))
        return slates

    # ---- events and feedback ----

    def add_event(self, user_id: str, item_id: str, kind: EventKind, at: datetime | None = None) -> EventRecord:
        """`at` backdates an event imported from elsewhere; default now."""
        row = _Event(created_at=utc(at) if at else _now(), user_id=user_id, item_id=item_id, kind=kind.value)
        queued = EventRecord(event_id=None, created_at=row.created_at, user_id=user_id, item_id=item_id, kind=kind, queued=True)
        if self._write("event", queued, lambda: self._add(row)):
            return queued
        return EventRecord(event_id=row.id, created_at=utc(row.created_at), user_id=user_id, item_id=item_id, kind=kind)

    def event_count(self, user_id: str) -> int:
        """The shopper's stored events plus queued ones (only the queued ones while the database is unavailable)."""
        try:
            with self._session() as session:
                stored = session.scalar(select(func.count()).select_from(_Event).where(_Event.user_id == user_id)) or 0
        except DATABASE_DOWN:
            stored = 0
        return stored + len(self._queue.find("event", lambda r: r.user_id == user_id))

    def add_feedback(self, user_id: str, kind: FeedbackKind, item_id: str | None = None, impression_id: str | None = None) -> FeedbackRecord:
        row = _Feedback(created_at=_now(), user_id=user_id, kind=kind.value, item_id=item_id, impression_id=impression_id)
        queued = FeedbackRecord(feedback_id=None, created_at=row.created_at, user_id=user_id, kind=kind, item_id=item_id, impression_id=impression_id, queued=True)
        if self._write("feedback", queued, lambda: self._add_feedback_row(row)):
            return queued
        return _feedback_record(row)

    def feedback(self, user_id: str) -> list[FeedbackRecord]:
        with self._reading("feedback lookups"), self._session() as session:
            rows = session.scalars(select(_Feedback).where(_Feedback.user_id == user_id).order_by(_Feedback.id))
            return [_feedback_record(r) for r in rows]

    def overlay(self, user_id: str) -> ShopperOverlay:
        """The shopper's posted events and standing feedback, as the recommender reads them (queued
        ones included; only those while the database is unavailable)."""
        try:
            with self._session() as session:
                events = [_as_event_record(e) for e in session.scalars(select(_Event).where(_Event.user_id == user_id).order_by(_Event.id)).all()]
                feedback = [
                    _feedback_record(f)
                    for f in session.scalars(
                        select(_Feedback).where(
                            _Feedback.user_id == user_id,
                            _Feedback.kind.in_([FeedbackKind.NOT_INTERESTED.value, FeedbackKind.EXCLUDE_PURCHASE.value]),
                        )
                    ).all()
                ]
        except DATABASE_DOWN:
            events, feedback = [], []  # recommendations go on from the loaded history and what is queued
        events += self._queue.find("event", lambda r: r.user_id == user_id)
        feedback += self._queue.find("feedback", lambda r: r.user_id == user_id)
        return ShopperOverlay(
            events=tuple(Interaction(user_id, e.item_id, e.kind, utc(e.created_at)) for e in events),
            not_interested=frozenset(f.item_id for f in feedback if f.kind is FeedbackKind.NOT_INTERESTED and f.item_id),
            excluded_history=frozenset(f.item_id for f in feedback if f.kind is FeedbackKind.EXCLUDE_PURCHASE and f.item_id),
        )

    # ---- writing, queueing ----

    def _add(self, row: _Base) -> None:
        self._ensure_schema()
        with self._writing.begin() as session:
            session.add(row)

    def _add_feedback_row(self, row: _Feedback) -> None:
        self._ensure_schema()
        with self._writing.begin() as session:
            if row.impression_id is not None and session.get(_Impression, row.impression_id) is None:
                raise UnknownImpression(row.impression_id)
            session.add(row)

    def _write(self, kind: str, record: BaseModel, write) -> bool:
        """Write now, or queue `record` when the database is unavailable or earlier writes are
        still queued. True when queued."""
        if not len(self._queue):
            try:
                write()
                return False
            except DATABASE_DOWN as exc:
                _warn(f"database {self.display_url} unavailable ({_short(exc)}): queueing writes")
        if not self._queue.put(kind, record):
            raise DatabaseUnavailable(
                f"the database {self.display_url} is unavailable and {self._queue.max_size} writes are already queued for it; try again later"
            )
        self._start_flusher()
        return True

    def _start_flusher(self) -> None:
        with self._lock:
            if self._flusher is not None and self._flusher.is_alive():
                return
            self._flusher = threading.Thread(target=self._flush_until_empty, name="whyrec-store-flush", daemon=True)
            self._flusher.start()

    def _flush_until_empty(self) -> None:
        while not self._stop.wait(self._retry_s):
            try:
                self.flush()
            except DATABASE_DOWN:
                continue
            except Exception as exc:  # noqa: BLE001 - the thread must not die with records queued
                _warn(f"writing queued records failed ({_short(exc)}); retrying")
                continue
            with self._lock:
                if not len(self._queue):
                    self._flusher = None
                    return

    def _ensure_schema(self) -> None:
        if not self._schema_ready:
            _Base.metadata.create_all(self.engine)
            self._schema_ready = True

    @contextmanager
    def _reading(self, what: str):
        try:
            self._ensure_schema()
            yield
        except DATABASE_DOWN as exc:
            raise DatabaseUnavailable(
                f"the database {self.display_url} is unavailable ({_short(exc)}); {what} need it. "
                f"{len(self._queue)} writes are queued and will be written when it returns"
            ) from None


# Errors that mean "the database cannot be reached now" (connection refused, file cannot be opened,
# locked, disk full), as opposed to a record it refuses.
DATABASE_DOWN = (OperationalError, InterfaceError)


def _write_impression(store: Store, record: ImpressionRecord) -> None:
    with store._writing.begin() as session:
        if session.get(_Impression, record.impression_id) is None:  # written before a crash, spool not yet trimmed
            session.add(_impression_row(record))


def _write_event(store: Store, record: EventRecord) -> None:
    store._add(_Event(created_at=record.created_at, user_id=record.user_id, item_id=record.item_id, kind=record.kind.value))


def _write_feedback(store: Store, record: FeedbackRecord) -> None:
    store._add_feedback_row(
        _Feedback(created_at=record.created_at, user_id=record.user_id, kind=record.kind.value, item_id=record.item_id, impression_id=record.impression_id)
    )


_WRITERS = {"impression": _write_impression, "event": _write_event, "feedback": _write_feedback}


def _warn(message: str) -> None:
    print(f"whyrec store: {message}", file=sys.stderr, flush=True)


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def _as_event_record(row: _Event) -> EventRecord:
    return EventRecord(event_id=row.id, created_at=utc(row.created_at), user_id=row.user_id, item_id=row.item_id, kind=EventKind(row.kind))


_WRITE = "whyrec_write"  # execution option of the write sessions' connections


def _engine(url: str) -> Engine:
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        try:
            Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass  # the driver's own error says the database cannot be opened; writes are queued meanwhile
    engine = create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        # WAL lets readers (the agent console) run while a slate is being written; foreign keys are
        # off by default in SQLite.
        @event.listens_for(engine, "connect")
        def _pragmas(connection: Any, _record: Any) -> None:
            connection.isolation_level = None  # the driver issues no BEGIN of its own: _begin does
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        # A write transaction takes the write lock when it begins, waiting for it up to the busy
        # timeout. A deferred one that read first (feedback checks its impression) cannot take it
        # once another process or thread has committed since, and fails at once: "database is locked".
        @event.listens_for(engine, "begin")
        def _begin(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE" if connection.get_execution_options().get(_WRITE) else "BEGIN")

    return engine


def _item_row(position: int, entry: RecommendedItem, prompt: list[tuple[str, str]], feature_names: tuple[str, ...]) -> _ImpressionItem:
    return _ImpressionItem(**impression_item(position, entry, prompt, feature_names).model_dump(mode="json"))


def _impression_row(record: ImpressionRecord) -> _Impression:
    """The rows of a queued impression record (the inverse of _impression_record)."""
    row = _Impression(id=record.impression_id, served_at=record.served_at, user_id=record.user_id, kind=record.kind, history=list(record.history))
    for item in record.items:
        row.items.append(_ImpressionItem(**item.model_dump(mode="json")))
    return row


def _impression_record(row: _Impression) -> ImpressionRecord:
    return ImpressionRecord(
        impression_id=row.id,
        served_at=utc(row.served_at),
        user_id=row.user_id,
        kind=row.kind,
        history=list(row.history),
        items=[ImpressionItemRecord.model_validate(i, from_attributes=True) for i in row.items],
    )


def _feedback_record(row: _Feedback) -> FeedbackRecord:
    return FeedbackRecord(
        feedback_id=row.id,
        created_at=utc(row.created_at),
        user_id=row.user_id,
        kind=FeedbackKind(row.kind),
        item_id=row.item_id,
        impression_id=row.impression_id,
    )
