"""Checked explanations kept in the service's database, so that a text is generated once per fact
table, template and model, whoever the shopper, and survives restarts and is shared by replicas.

The key is the fact table's content (see `cache.cache_key`), not the shopper: two shoppers with the
same evidence (the same history item, the same shared brand or count) read the same sentence. Only
answers that are the generator's own for these facts are kept (model texts, and the template shown
because the model's answers failed the check); a template shown because the server was down or
late is not, so the next request asks again.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone

from sqlalchemy import DateTime, Engine, String, Text, func, select
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from whyrec.core.schema import Attempt, Explanation, ExplanationSource, FallbackReason, fact_from_dict, fact_to_dict


class _Base(DeclarativeBase):
    pass


class _StoredExplanation(_Base):
    __tablename__ = "explanations"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    item_id: Mapped[str] = mapped_column(String(200), index=True)
    template: Mapped[str] = mapped_column(String(100))
    model: Mapped[str] = mapped_column(String(300))
    source: Mapped[str] = mapped_column(String(20))
    explanation: Mapped[str] = mapped_column(Text)  # the Explanation as JSON (explanation_to_json)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


def explanation_to_json(explanation: Explanation) -> str:
    return json.dumps(
        {
            "text": explanation.text,
            "source": explanation.source.value,
            "grounded": explanation.grounded,
            "facts": [fact_to_dict(f) for f in explanation.facts],
            "prompt_version": explanation.prompt_version,
            "model": explanation.model,
            "attempts": [{"raw_output": a.raw_output, "text": a.text, "passed": a.passed, "reason": a.reason} for a in explanation.attempts],
            "fallback": explanation.fallback.value if explanation.fallback else None,
        },
        ensure_ascii=False,
    )


def explanation_from_json(text: str) -> Explanation:
    data = json.loads(text)
    return Explanation(
        text=data["text"],
        source=ExplanationSource(data["source"]),
        grounded=data["grounded"],
        facts=tuple(fact_from_dict(f, f"stored explanation facts[{i}]") for i, f in enumerate(data["facts"])),
        prompt_version=data["prompt_version"],
        model=data["model"],
        attempts=tuple(Attempt(**a) for a in data["attempts"]),
        fallback=FallbackReason(data["fallback"]) if data["fallback"] else None,
    )


class ExplanationStore:
    """Explanations by key in a SQLAlchemy database. A database that does not answer costs a
    generation, never a request: reads miss and writes are dropped, with one warning."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._warned = False
        try:
            _Base.metadata.create_all(engine)
        except OperationalError as exc:
            self._warn(exc)

    def get(self, key: str) -> Explanation | None:
        try:
            with Session(self.engine) as session:
                row = session.scalar(select(_StoredExplanation.explanation).where(_StoredExplanation.key == key))
        except SQLAlchemyError as exc:
            self._warn(exc)
            return None
        return explanation_from_json(row) if row is not None else None

    def put(self, key: str, item_id: str, template: str, model: str, explanation: Explanation) -> None:
        row = _StoredExplanation(
            key=key, item_id=item_id, template=template, model=model, source=explanation.source.value,
            explanation=explanation_to_json(explanation), created_at=datetime.now(timezone.utc),
        )
        try:
            with Session(self.engine) as session, session.begin():
                session.add(row)
        except IntegrityError:
            pass  # another replica or worker stored the same key first: the same facts, kept once
        except SQLAlchemyError as exc:
            self._warn(exc)

    def count(self) -> int:
        with Session(self.engine) as session:
            return session.scalar(select(func.count()).select_from(_StoredExplanation)) or 0

    def _warn(self, exc: BaseException) -> None:
        if not self._warned:
            self._warned = True
            print(f"whyrec: explanation store unavailable ({type(exc).__name__}): explanations are generated again until it answers", file=sys.stderr)
