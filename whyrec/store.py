"""The impression log and the feedback store, through SQLAlchemy (a SQLite file by default, any
database URL in production). Every served slate is written whole, in one transaction, with what an
agent needs to answer "why did X appear for this shopper last Tuesday?" from the record: ranks,
scores, the fact table, the exact prompt, the prompt version, the model, the shown text, every raw
answer and the grounding verdict. Shopper events and feedback are kept here too and read back as the
overlay the recommender lays over the loaded history, and read back as shown slates with what the
shopper engaged with: the ranker's feedback training data."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, create_engine, event, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, selectinload, sessionmaker

from whyrec.catalog import EventKind, Interaction
from whyrec.errors import WhyrecError
from whyrec.schema import RecommendedItem, ShopperOverlay, ShownSlate


class UnknownImpression(WhyrecError):
    def __init__(self, impression_id: str):
        self.impression_id = impression_id
        super().__init__(f"unknown impression '{impression_id}': no served slate with this id in the store")


class FeedbackKind(str, Enum):
    HELPFUL = "helpful"  # on an explanation
    NOT_HELPFUL = "not_helpful"
    NOT_INTERESTED = "not_interested"  # in an item: never recommend it again
    EXCLUDE_PURCHASE = "exclude_purchase"  # "don't use this purchase for my recommendations"


# ---- records: what the store hands out (also the API's response models) ----


class FactRecord(BaseModel):
    id: str
    kind: str
    text: str
    value: str = ""
    about_history: bool = False


class AttributionRecord(BaseModel):
    history_item_id: str
    contribution: float
    rank_without: int | None = None


class AttemptRecord(BaseModel):
    raw_output: str
    text: str
    passed: bool
    reason: str


class PromptMessage(BaseModel):
    role: str
    content: str


class ImpressionItemRecord(BaseModel):
    position: int = Field(description="1-based place in the served slate")
    item_id: str
    title: str
    rank: int = Field(description="rank among all scored candidates")
    candidates_scored: int
    retrieval_score: float
    ranker_score: float
    features: dict[str, float] = Field(description="per-source retrieval scores")
    attributions: list[AttributionRecord]
    fact_table: list[FactRecord] = Field(description="every fact the generator was given")
    cited_fact_ids: list[str] = Field(description="the facts the shown text rests on")
    prompt: list[PromptMessage] = Field(description="the exact messages sent to the generator (first attempt)")
    prompt_version: str
    model: str
    text: str = Field(description="the explanation exactly as shown")
    source: str = Field(description="llm or template")
    grounded: bool
    attempts: list[AttemptRecord]


class ImpressionRecord(BaseModel):
    impression_id: str
    served_at: datetime
    user_id: str
    kind: str = Field(description="slate (recommendations) or explain (one item on request)")
    history: list[str] = Field(description="the history the slate was ranked on, oldest first")
    items: list[ImpressionItemRecord]


class EventRecord(BaseModel):
    event_id: int
    created_at: datetime
    user_id: str
    item_id: str
    kind: EventKind


class FeedbackRecord(BaseModel):
    feedback_id: int
    created_at: datetime
    user_id: str
    kind: FeedbackKind
    item_id: str | None = None
    impression_id: str | None = None


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


def _utc(value: datetime) -> datetime:
    """SQLite gives naive datetimes back; everything stored is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _as_utc(value: datetime) -> datetime:
    """A naive time is taken as UTC; SQLite compares the stored UTC wall-clock text."""
    return value.astimezone(timezone.utc).replace(tzinfo=None) if value.tzinfo else value


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Store:
    """One per process; thread-safe (a session per call)."""

    def __init__(self, url: str):
        self.url = url
        self.engine = _engine(url)
        _Base.metadata.create_all(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(self.engine.execution_options(**{_WRITE: True}), expire_on_commit=False)

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")

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
        with self._write.begin() as session:
            session.add(row)
        return _impression_record(row)

    def impression(self, impression_id: str) -> ImpressionRecord:
        with self._session() as session:
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
        with self._session() as session:
            return [_impression_record(row) for row in session.scalars(query)]

    def shown_slates(self, since: datetime | None = None, window: timedelta = timedelta(days=1), now: datetime | None = None) -> list[ShownSlate]:
        """Served slates (oldest first) whose engagement `window` has closed, each with the shown items
        the shopper then clicked, carted or bought within the window. A slate still inside its window
        is left out: its skipped items may yet be engaged with."""
        settled = (now or _now()) - window
        query = (
            select(_Impression)
            .options(selectinload(_Impression.items))
            .where(_Impression.kind == "slate", _Impression.served_at <= _as_utc(settled))
            .order_by(_Impression.served_at)
        )
        if since is not None:
            query = query.where(_Impression.served_at >= _as_utc(since))
        engaging = [EventKind.CLICK.value, EventKind.CART.value, EventKind.PURCHASE.value]
        with self._session() as session:
            rows = session.scalars(query).all()
            if not rows:
                return []
            events = session.scalars(
                select(_Event).where(
                    _Event.user_id.in_({r.user_id for r in rows}),
                    _Event.kind.in_(engaging),
                    _Event.created_at >= _as_utc(_utc(rows[0].served_at)),
                    _Event.created_at <= _as_utc(_utc(rows[-1].served_at) + window),
                )
            ).all()
        by_user: dict[str, list[tuple[datetime, str]]] = {}
        for e in events:
            by_user.setdefault(e.user_id, []).append((_utc(e.created_at), e.item_id))
        slates = []
        for row in rows:
            served_at, shown = _utc(row.served_at), tuple(i.item_id for i in row.items)
            engaged = frozenset(
                item for at, item in by_user.get(row.user_id, []) if served_at <= at <= served_at + window and item in shown
            )
            slates.append(ShownSlate(row.user_id, tuple(row.history), shown, engaged))
        return slates

    # ---- events and feedback ----

    def add_event(self, user_id: str, item_id: str, kind: EventKind, at: datetime | None = None) -> EventRecord:
        """`at` backdates an event imported from elsewhere; default now."""
        row = _Event(created_at=_utc(at) if at else _now(), user_id=user_id, item_id=item_id, kind=kind.value)
        with self._write.begin() as session:
            session.add(row)
        return EventRecord(event_id=row.id, created_at=_utc(row.created_at), user_id=user_id, item_id=item_id, kind=kind)

    def event_count(self, user_id: str) -> int:
        with self._session() as session:
            return session.scalar(select(func.count()).select_from(_Event).where(_Event.user_id == user_id)) or 0

    def add_feedback(self, user_id: str, kind: FeedbackKind, item_id: str | None = None, impression_id: str | None = None) -> FeedbackRecord:
        row = _Feedback(created_at=_now(), user_id=user_id, kind=kind.value, item_id=item_id, impression_id=impression_id)
        with self._write.begin() as session:
            if impression_id is not None and session.get(_Impression, impression_id) is None:
                raise UnknownImpression(impression_id)
            session.add(row)
        return _feedback_record(row)

    def feedback(self, user_id: str) -> list[FeedbackRecord]:
        with self._session() as session:
            rows = session.scalars(select(_Feedback).where(_Feedback.user_id == user_id).order_by(_Feedback.id))
            return [_feedback_record(r) for r in rows]

    def overlay(self, user_id: str) -> ShopperOverlay:
        """The shopper's posted events and standing feedback, as the recommender reads them."""
        with self._session() as session:
            events = session.scalars(select(_Event).where(_Event.user_id == user_id).order_by(_Event.id)).all()
            feedback = session.scalars(
                select(_Feedback).where(
                    _Feedback.user_id == user_id,
                    _Feedback.kind.in_([FeedbackKind.NOT_INTERESTED.value, FeedbackKind.EXCLUDE_PURCHASE.value]),
                )
            ).all()
        return ShopperOverlay(
            events=tuple(Interaction(user_id, e.item_id, EventKind(e.kind), _utc(e.created_at)) for e in events),
            not_interested=frozenset(f.item_id for f in feedback if f.kind == FeedbackKind.NOT_INTERESTED.value and f.item_id),
            excluded_history=frozenset(f.item_id for f in feedback if f.kind == FeedbackKind.EXCLUDE_PURCHASE.value and f.item_id),
        )


_WRITE = "whyrec_write"  # execution option of the write sessions' connections


def _engine(url: str) -> Engine:
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).expanduser().parent.mkdir(parents=True, exist_ok=True)
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
    ranked, e = entry.ranked, entry.explanation
    table = entry.fact_table.facts if entry.fact_table else e.facts
    return _ImpressionItem(
        position=position,
        item_id=entry.item_id,
        title=entry.title,
        rank=ranked.rank,
        candidates_scored=ranked.candidates_scored,
        retrieval_score=float(ranked.retrieval_score),
        ranker_score=float(ranked.ranker_score),
        features={name: float(v) for name, v in zip(feature_names, ranked.features)},
        attributions=[
            {"history_item_id": a.history_item_id, "contribution": float(a.contribution), "rank_without": a.rank_without} for a in ranked.attributions
        ],
        fact_table=[{"id": f.fact_id, "kind": f.kind.value, "text": f.text, "value": f.value, "about_history": f.about_history} for f in table],
        cited_fact_ids=[f.fact_id for f in e.facts],
        prompt=[{"role": role, "content": content} for role, content in prompt],
        prompt_version=e.prompt_version,
        model=e.model,
        text=e.text,
        source=e.source.value,
        grounded=e.grounded,
        attempts=[{"raw_output": a.raw_output, "text": a.text, "passed": a.passed, "reason": a.reason} for a in e.attempts],
    )


def _impression_record(row: _Impression) -> ImpressionRecord:
    return ImpressionRecord(
        impression_id=row.id,
        served_at=_utc(row.served_at),
        user_id=row.user_id,
        kind=row.kind,
        history=list(row.history),
        items=[
            ImpressionItemRecord(
                position=i.position,
                item_id=i.item_id,
                title=i.title,
                rank=i.rank,
                candidates_scored=i.candidates_scored,
                retrieval_score=i.retrieval_score,
                ranker_score=i.ranker_score,
                features=i.features,
                attributions=[AttributionRecord(**a) for a in i.attributions],
                fact_table=[FactRecord(**f) for f in i.fact_table],
                cited_fact_ids=i.cited_fact_ids,
                prompt=[PromptMessage(**m) for m in i.prompt],
                prompt_version=i.prompt_version,
                model=i.model,
                text=i.text,
                source=i.source,
                grounded=i.grounded,
                attempts=[AttemptRecord(**a) for a in i.attempts],
            )
            for i in row.items
        ],
    )


def _feedback_record(row: _Feedback) -> FeedbackRecord:
    return FeedbackRecord(
        feedback_id=row.id,
        created_at=_utc(row.created_at),
        user_id=row.user_id,
        kind=FeedbackKind(row.kind),
        item_id=row.item_id,
        impression_id=row.impression_id,
    )
