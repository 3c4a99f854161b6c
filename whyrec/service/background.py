"""The background explainer: a shopper's next slate is ranked and its missing explanations are
generated while nobody waits, so that the page shows stored model texts at once.

One worker thread per process, a bounded queue, at most one job per shopper (a newer job for a
shopper replaces the queued one: only their latest state matters), and a job whose shopper's
history changed since it was queued is dropped as stale (the event that changed it queued a
fresh one). Results land in the explainer's cache and through it in the explanation store; the
job itself returns nothing. API replicas that share a database use `whyrec.service.jobqueue` instead (run by
`whyrec worker`), so that no two of them write the same explanations.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

from whyrec.core.schema import FactTable
from whyrec.pipeline import GenerationInterrupted, interruptible

PAUSE_MAX_S = 10.0


@dataclass
class _Job:
    user_id: str
    state: str  # the shopper's history key when queued
    tables: Callable[[], list[FactTable]]  # what to explain, computed when the job runs (ranking is part of the work)
    first: bool = False  # a shopper on the page now: goes ahead, and is not cut into parts
    queued_at: float = field(default_factory=time.monotonic)


@dataclass
class BackgroundStats:
    queued: int = 0  # jobs accepted
    done: int = 0
    stale: int = 0  # dropped: the shopper's history changed since
    refused: int = 0  # the queue was full
    failed: int = 0
    interrupted: int = 0  # parts stopped mid-generation for a shopper on the page
    explained: int = 0  # explanations generated (cache misses the jobs filled)
    last_lag_s: float = 0.0  # from queueing to the start of the last job


class BackgroundExplainer:
    """`explain(tables)` generates and stores (the explainer's explain without a deadline or with
    the service's); `state(user_id)` is the shopper's current history key; `missing(tables)` keeps
    the tables without a stored explanation."""

    def __init__(
        self,
        explain: Callable[[list[FactTable]], object],
        state: Callable[[str], str],
        missing: Callable[[list[FactTable]], list[FactTable]],
        max_queued: int = 256,
        part: int = 10,
    ):
        self._explain, self._state, self._missing = explain, state, missing
        self.max_queued = max_queued
        # A pre-warm or next-slate job is written `part` tables at a time (a whole slate: one batch
        # is cheaper per text than two), and gives way to a shopper who is on the page: between
        # parts, and within one (an in-process generator stops at its next decode step).
        self.part = part
        self._jobs: OrderedDict[str, _Job] = OrderedDict()
        self._running: _Job | None = None
        self._preempt = threading.Event()
        self._live = 0  # pages being made now
        self._cond = threading.Condition()
        self._closed = False
        self.stats = BackgroundStats()
        self._thread = threading.Thread(target=self._work, name="whyrec-background-explainer", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        with self._cond:
            return len(self._jobs)

    @property
    def running(self) -> int:
        """Jobs running now: 0 or 1 (one worker thread)."""
        with self._cond:
            return int(self._running is not None)

    @property
    def lag_s(self) -> float:
        """How long the oldest queued job has waited (0 with none)."""
        with self._cond:
            oldest = next(iter(self._jobs.values()), None)
            return time.monotonic() - oldest.queued_at if oldest else 0.0

    def submit(self, user_id: str, tables: Callable[[], list[FactTable]], first: bool = False) -> bool:
        """Queue the shopper's job (replacing one already queued for them); False when the queue is
        full. `first`: ahead of the queue (a shopper on the page now goes before a pre-warm)."""
        state = self._state(user_id)
        with self._cond:
            if self._closed:
                return False
            if user_id not in self._jobs and len(self._jobs) >= self.max_queued:
                self.stats.refused += 1
                return False
            self._jobs.pop(user_id, None)
            self._jobs[user_id] = _Job(user_id, state, tables, first)
            if first:
                self._jobs.move_to_end(user_id, last=False)
                if self._running is not None and not self._running.first:
                    self._preempt.set()
            self.stats.queued += 1
            self._cond.notify()
        return True

    @contextmanager
    def live(self) -> Iterator[None]:
        """A shopper's page is being made (ranked): background generation pauses at its next
        decode step until it is, so the page does not share the cores with another shopper's batch."""
        with self._cond:
            self._live += 1
        try:
            yield
        finally:
            with self._cond:
                self._live -= 1
                self._cond.notify_all()

    def _should_stop(self) -> bool:
        """The generator's check between decode steps: waits while pages are being made (at most
        PAUSE_MAX_S, so a stuck request cannot stop the background), then True if a shopper on the
        page waits for the generator."""
        with self._cond:
            self._cond.wait_for(lambda: self._live == 0 or self._closed, timeout=PAUSE_MAX_S)
        return self._preempt.is_set()

    def wait_idle(self, timeout_s: float) -> bool:
        """Until nothing is queued or running (tests, batch runs); False on timeout."""
        end = time.monotonic() + timeout_s
        with self._cond:
            while self._jobs or self._running is not None:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._jobs.clear()
            self._cond.notify_all()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                _, job = self._jobs.popitem(last=False)
                self._running = job
                self._preempt.clear()
            try:
                self._run(job)
            except Exception as exc:  # noqa: BLE001 - a failed job must not stop the worker
                self.stats.failed += 1
                print(f"whyrec: background explanation for shopper {job.user_id!r} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            finally:
                with self._cond:
                    self._running = None
                    self._cond.notify_all()

    def _run(self, job: _Job) -> None:
        self.stats.last_lag_s = time.monotonic() - job.queued_at
        if self._state(job.user_id) != job.state:
            self.stats.stale += 1
            return
        todo = self._missing(job.tables())
        while todo:
            step = len(todo) if job.first else self.part
            try:
                with interruptible(self._should_stop):
                    self._explain(todo[:step])
            except GenerationInterrupted:
                self.stats.interrupted += 1
                todo = self._missing(todo)  # the part's texts stored before the stop are done
                if self._closed or (todo and self._gives_way(job, todo)):
                    return
                self._preempt.clear()  # the live job it stopped for is no longer queued: go on
                continue
            self.stats.explained += len(todo[:step])
            todo = todo[step:]
            if todo and self._gives_way(job, todo):
                return
        self.stats.done += 1

    def _gives_way(self, job: _Job, rest: list[FactTable]) -> bool:
        """With a shopper on the page waiting, the rest of this job queues behind them (unless a
        newer job for the same shopper is queued already, which replaces it); True if it did."""
        with self._cond:
            if not any(j.first for j in self._jobs.values()):
                return False
            if job.user_id not in self._jobs:
                queued = list(self._jobs.items())
                self._jobs.clear()
                self._jobs.update([(u, j) for u, j in queued if j.first])
                self._jobs[job.user_id] = _Job(job.user_id, job.state, lambda: rest, queued_at=job.queued_at)
                self._jobs.update([(u, j) for u, j in queued if not j.first])
            return True
