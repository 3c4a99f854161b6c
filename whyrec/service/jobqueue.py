"""The background explainer for several API replicas: its jobs live in the replicas' shared
PostgreSQL database, in procrastinate's job queue, and `whyrec worker` processes run them.

procrastinate (not a queue written here) holds the jobs, hands each to one worker, and records how
each ended. One job per shopper: a job's queueing lock is the shopper, so at most one waits per
shopper across every replica (a replica asking for the same slate again finds it queued; one asking
for a newer state, or another slate, cancels the waiting job and takes its place, as the in-process
queue replaces it), and its lock is the shopper too, so no two workers run a shopper's jobs at once.

A job names the slate (shopper, k, topic words) and the shopper's history state when it was queued;
the worker ranks the slate itself. A job whose shopper's state changed since (feedback, which queues
nothing) is dropped as stale and ends 'aborted'. So the job table holds the outcomes every replica
reports: done = succeeded, stale = cancelled (replaced while waiting) + aborted, failed = failed.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from contextlib import AbstractContextManager, nullcontext
from typing import Callable

from pydantic import BaseModel, ConfigDict, Field

from whyrec.core.errors import ConfigError, WhyrecError
from whyrec.service.background import BackgroundStats

QUEUE = "whyrec-explain"
TASK = "whyrec.explain_next_slate"
UPKEEP = "whyrec.job_upkeep"
PAGE_PRIORITY = 1  # a shopper on the page goes before pre-warmed shoppers and next slates (0)
KEEP_FINISHED_HOURS = 24  # finished jobs (the outcome counts) are kept this long
_SCHEMA_LOCK = 0x77687972  # the advisory lock under which replicas and workers create the tables

# The jobs waiting, and how long the oldest has waited (procrastinate records a job's deferral as an
# event; the job row has no time of its own).
_WAITING = """
SELECT count(*) AS depth, coalesce(extract(epoch FROM now() - min(e.at)), 0)::float AS lag_s
  FROM procrastinate_jobs j
  LEFT JOIN procrastinate_events e ON e.job_id = j.id AND e.type = 'deferred'
 WHERE j.queue_name = %(queue)s AND j.task_name = %(task)s AND j.status = 'todo'
"""


class SlateJob(BaseModel):
    """A job's arguments, as the job table holds them (JSON): enough for a worker to rank the slate."""

    model_config = ConfigDict(frozen=True)

    user_id: str
    state: str  # the shopper's history key when queued (service._state_of)
    k: int = Field(ge=1)
    topic: tuple[str, ...] = ()  # the shopper's topic words, sorted


def conninfo(database_url: str) -> str:
    """The libpq URL of the service's SQLAlchemy URL (postgresql+psycopg://... -> postgresql://...)."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        raise ConfigError(
            f"the job queue lives in the replicas' shared PostgreSQL database, not {url.render_as_string(hide_password=True)}: "
            "set WHYREC_DATABASE_URL (--database-url) to a postgresql+psycopg://... URL"
        )
    try:
        import procrastinate  # noqa: F401
    except ImportError:
        raise ConfigError("the job queue needs procrastinate and psycopg: pip install 'whyrec[postgres]'") from None
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def ensure_schema(dsn: str) -> None:
    """procrastinate's tables, created on the first start against a database. Its own
    `apply_schema` fails on a database that has them, and replicas and workers start together:
    they take turns under an advisory lock, and whoever finds the tables leaves them."""
    import psycopg
    from procrastinate.schema import SchemaManager

    try:
        with psycopg.connect(dsn, connect_timeout=10) as connection, connection.transaction():
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            if connection.execute("SELECT to_regclass('procrastinate_jobs')").fetchone()[0] is None:
                connection.execute(SchemaManager.get_schema())
    except psycopg.OperationalError as exc:
        raise WhyrecError(f"the job queue's database does not answer ({str(exc).strip()})") from None


class JobQueue:
    """The replicas' side of the queue: `submit` defers a shopper's job (from request threads,
    never raising: a page must not fail for its background work); depth, lag and stats read the
    whole queue, as every replica sees it."""

    def __init__(self, database_url: str, max_queued: int = 256):
        from procrastinate import App, SyncPsycopgConnector

        dsn = conninfo(database_url)
        ensure_schema(dsn)
        self.max_queued = max_queued  # checked before deferring: replicas racing may pass it by a few
        # A page waits at most `timeout` seconds for a connection: its background work is not worth more.
        self._app = App(connector=SyncPsycopgConnector(conninfo=dsn, min_size=1, max_size=4, timeout=2)).open()
        self._lock = threading.Lock()
        self._queued = 0  # jobs this replica deferred
        self._refused = 0  # not queued: the queue was full, or the database did not answer
        self._reads: dict[str, tuple[float, object]] = {}
        self._warned = False

    def submit(self, job: SlateJob, first: bool = False) -> bool:
        """Queue the shopper's job, replacing one of theirs that waits for another state or slate;
        True when it is queued (also when it already was), False when refused."""
        from procrastinate.exceptions import ConnectorException

        try:
            if self._waiting()["depth"] >= self.max_queued:
                return self._refuse()
            self._defer(job, PAGE_PRIORITY if first else 0)
        except ConnectorException as exc:
            self._warn(exc)
            return self._refuse()
        return True

    def _defer(self, job: SlateJob, priority: int) -> None:
        from procrastinate.exceptions import AlreadyEnqueued

        lock = f"shopper:{job.user_id}"
        deferrer = self._app.configure_task(TASK, queue=QUEUE, lock=lock, queueing_lock=lock, priority=priority)
        args = job.model_dump(mode="json")
        for _ in range(3):
            try:
                deferrer.defer(**args)
            except AlreadyEnqueued:
                waiting = self._app.job_manager.list_jobs(queue=QUEUE, task=TASK, queueing_lock=lock, status="todo")
                if waiting and SlateJob.model_validate(waiting[0].task_kwargs) == job and waiting[0].priority >= priority:
                    return  # the same job is queued already
                if waiting:
                    # Made for an older state (or another slate): it would only be dropped as stale.
                    self._app.job_manager.cancel_job_by_id(waiting[0].id)
                continue  # again: the waiting job is cancelled, has just started, or another replica replaced it
            with self._lock:
                self._queued += 1
            return
        # Each try, another replica had queued this shopper's newest job first: theirs stands.

    def _waiting(self) -> dict:
        return self._app.connector.execute_query_one(_WAITING, queue=QUEUE, task=TASK)

    @property
    def depth(self) -> float:
        """Jobs waiting, from every replica (NaN while the database does not answer)."""
        waiting = self._read("waiting", self._waiting)
        return math.nan if isinstance(waiting, float) else waiting["depth"]

    def _counts(self) -> dict | float:
        """Jobs by status (todo, doing, succeeded, ...), kept for the last day; NaN while the database does not answer."""
        return self._read("outcomes", lambda: next(iter(self._app.job_manager.list_queues(queue=QUEUE, task=TASK)), {}))

    @property
    def running(self) -> float:
        """Jobs the workers are running now (NaN while the database does not answer)."""
        counts = self._counts()
        return math.nan if isinstance(counts, float) else counts.get("doing", 0)

    @property
    def lag_s(self) -> float:
        """How long the oldest waiting job has waited (0 with none)."""
        waiting = self._read("waiting", self._waiting)
        return math.nan if isinstance(waiting, float) else waiting["lag_s"]

    @property
    def stats(self) -> BackgroundStats:
        """This replica's queued and refused jobs; the whole queue's outcomes (of the last day)."""
        counts = self._counts()

        def outcome(*statuses: str) -> float:
            return math.nan if isinstance(counts, float) else sum(counts.get(s, 0) for s in statuses)

        return BackgroundStats(
            queued=self._queued, refused=self._refused, done=outcome("succeeded"), stale=outcome("cancelled", "aborted"), failed=outcome("failed")
        )

    def live(self) -> AbstractContextManager[None]:
        """Pages and the queue's workers run in different processes: nothing here to pause."""
        return nullcontext()

    def close(self) -> None:
        self._app.close()

    def _read(self, what: str, read):
        """`read()`, or its value of the last second: a /metrics scrape reads several gauges at
        once, and while the database does not answer each read waits for the pool. NaN then."""
        from procrastinate.exceptions import ConnectorException

        with self._lock:
            at, value = self._reads.get(what, (-math.inf, None))
        if time.monotonic() - at < 1.0:
            return value
        try:
            value = read()
        except ConnectorException as exc:
            self._warn(exc)
            value = math.nan
        with self._lock:
            self._reads[what] = (time.monotonic(), value)
        return value

    def _refuse(self) -> bool:
        with self._lock:
            self._refused += 1
        return False

    def _warn(self, exc: BaseException) -> None:
        if not self._warned:
            self._warned = True
            cause = exc.__cause__ or exc
            print(f"whyrec: the job queue's database does not answer ({type(cause).__name__}: {cause}): pages keep their templates until it does", file=sys.stderr)


def run_worker(database_url: str, explain: Callable[[SlateJob], int | None], concurrency: int, log: Callable[[str], None]) -> None:
    """Run the queue's jobs until SIGINT or SIGTERM (the jobs running then are finished first).
    `explain(job)`: the number of explanations generated, or None when the job is stale."""
    from procrastinate import App, PsycopgConnector
    from procrastinate.exceptions import JobAborted
    from procrastinate.jobs import Status

    dsn = conninfo(database_url)
    ensure_schema(dsn)
    app = App(connector=PsycopgConnector(conninfo=dsn))

    @app.task(name=TASK, queue=QUEUE)
    def explain_next_slate(user_id: str, state: str, k: int, topic: list[str]) -> None:
        job, started = SlateJob(user_id=user_id, state=state, k=k, topic=tuple(topic)), time.monotonic()
        generated = explain(job)
        if generated is None:
            log(f"shopper {user_id!r}: stale (their history changed since the job was queued): dropped")
            raise JobAborted("stale: the shopper's history changed since the job was queued")  # recorded as 'aborted'
        log(f"shopper {user_id!r}: {generated} explanations generated in {time.monotonic() - started:.1f}s")

    # Each worker defers it; procrastinate runs one per minute whichever worker defers it first.
    @app.periodic(cron="* * * * *")
    @app.task(name=UPKEEP, queue=QUEUE, queueing_lock=UPKEEP, priority=PAGE_PRIORITY + 1)
    async def job_upkeep(timestamp: int) -> None:
        # A worker that died mid-job leaves it 'doing', and its lock would keep that shopper's
        # later jobs from ever running: such jobs end as failed (the shopper's next event queues anew).
        for stalled in await app.job_manager.get_stalled_jobs(queue=QUEUE, task_name=TASK):
            await app.job_manager.finish_job_by_id_async(stalled.id, Status.FAILED, delete_job=False)
            log(f"shopper {stalled.task_kwargs.get('user_id')!r}: job {stalled.id} of a worker that stopped answering: failed")
        # Every event queues a job: finished ones go after a day (the stats read what is kept).
        await app.job_manager.delete_old_jobs(KEEP_FINISHED_HOURS, queue=QUEUE, include_failed=True, include_cancelled=True, include_aborted=True)

    log(f"whyrec worker: running the background explainer's jobs (queue {QUEUE!r}, {concurrency} at a time); Ctrl-C or SIGTERM to stop")
    app.run_worker(queues=[QUEUE], concurrency=concurrency)
