"""The write spool: records waiting for an unavailable database, kept in order in memory and in an
append-only file that survives a restart (see `WriteQueue`)."""

from __future__ import annotations

import fcntl
import json
import os
import sys
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from whyrec.core.protocol import EventRecord, FeedbackRecord, ImpressionRecord

# The spool holds each kind of write as its wire record (whyrec.core.protocol).
_RECORDS: dict[str, type[BaseModel]] = {"impression": ImpressionRecord, "event": EventRecord, "feedback": FeedbackRecord}


@dataclass(frozen=True)
class _Queued:
    seq: int
    kind: str
    record: Any


class WriteQueue:
    """Records waiting for the database, oldest first, bounded; mirrored in an append-only JSON
    lines file (`{"seq", "kind", "record"}` when queued, `{"done": seq}` when written) that is
    replayed on start and emptied whenever the queue drains. Without a file (or when it cannot be
    written) the queue lives in memory only.

    Each process holds its spool file locked: API replicas on one machine share a database, not a
    spool. A second process takes `<name>.1.jsonl` (and so on), and on start a process takes over
    the records in spool files no running process holds (left by one that ended)."""

    def __init__(self, path: Path | None, max_size: int):
        self.max_size = max_size
        self._entries: deque[_Queued] = deque()
        self._lock = threading.Lock()
        self._seq = 0
        self._file = None  # the locked spool file, open for appending
        self.path = None
        if path is not None:
            try:
                self._claim(Path(path))
            except OSError as exc:
                _warn(f"cannot use the spool file {path} ({exc}); queued records are kept in memory only")

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, kind: str, record: BaseModel) -> bool:
        with self._lock:
            if len(self._entries) >= self.max_size:
                return False
            self._add(kind, record)
            return True

    def peek(self) -> _Queued | None:
        with self._lock:
            return self._entries[0] if self._entries else None

    def pop(self, entry: _Queued) -> None:
        with self._lock:
            if self._entries and self._entries[0].seq == entry.seq:
                self._entries.popleft()
            if self._entries:
                self._append({"done": entry.seq})
            elif self._file is not None:
                self._file.truncate(0)

    def find(self, kind: str, match) -> list:
        with self._lock:
            return [e.record for e in self._entries if e.kind == kind and match(e.record)]

    def close(self) -> None:
        """Release the spool file; what it holds is replayed by the next process to take it."""
        if self._file is not None:
            self._file.close()  # closing drops the lock
            self._file = None

    def _add(self, kind: str, record: BaseModel) -> None:
        self._seq += 1
        self._append({"seq": self._seq, "kind": kind, "record": record.model_dump(mode="json")})
        self._entries.append(_Queued(self._seq, kind, record))

    def _append(self, line: dict) -> None:
        if self._file is None:
            return
        try:
            self._file.write(json.dumps(line, ensure_ascii=False) + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            _warn(f"cannot write the spool file {self.path} ({exc}); queued records are kept in memory only")
            self.close()

    def _claim(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        siblings = [path, *sorted(path.parent.glob(f"{path.stem}.*{path.suffix}"))]
        for n in range(len(siblings) + 1):
            candidate = path if n == 0 else path.with_name(f"{path.stem}.{n}{path.suffix}")
            if (held := _lock(candidate)) is not None:
                self.path, self._file = candidate, held
                break
        if self._file is None:
            raise OSError(f"every spool file next to {path} is held by another process")
        for entry in _pending(self.path):
            self._entries.append(entry)
            self._seq = max(self._seq, entry.seq)
        adopted = 0
        for other in siblings:
            if other != self.path and (held := _lock(other)) is not None:
                with held:  # left by a process that ended: its records become ours
                    for entry in _pending(other):
                        self._add(entry.kind, entry.record)
                        adopted += 1
                    held.truncate(0)
        if self._entries:
            _warn(f"{len(self._entries)} writes queued in {self.path} from an earlier run ({adopted} taken over from other spool files): they are written when the database answers")


def _lock(path: Path):
    """`path` opened for appending and locked for this process, or None when another holds it."""
    held = open(path, "a", encoding="utf-8")
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        held.close()
        return None
    return held


def _pending(path: Path) -> list[_Queued]:
    """The records a spool file holds that were not written yet, oldest first."""
    pending: dict[int, _Queued] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            data = json.loads(line)
            if "done" in data:
                pending.pop(int(data["done"]), None)
            else:
                pending[int(data["seq"])] = _Queued(int(data["seq"]), data["kind"], _RECORDS[data["kind"]].model_validate(data["record"]))
        except (ValueError, KeyError, TypeError):
            # A line cut short by a crash mid-append: the write it held was never acknowledged.
            _warn(f"{path}, line {number}: not a queued record; skipped")
    return [pending[s] for s in sorted(pending)]


def _warn(message: str) -> None:
    print(f"whyrec store: {message}", file=sys.stderr, flush=True)
