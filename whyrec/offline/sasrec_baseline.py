"""SASRec (RecBole 1.2.1) as a peer baseline for the offline evaluation.

RecBole needs numpy<2 and pandas<3, so it lives in its own virtualenv (``bash
scripts/setup-recbole.sh`` makes ``.venv-recbole``) and runs as a subprocess: this module writes
each shopper's sequence to a temp folder, runs ``recbole_sasrec.py`` (beside this file) under that
venv's Python and reads back its metrics. It runs beside the caller (`start_sasrec`), so an
evaluation scores its own methods while SASRec trains. The protocol is whyrec.offline.evaluation's: last item = target,
full catalog, the shopper's history items excluded, ties count half.

A finished run's result is kept in the cache, keyed by everything that decides it (every shopper's
sequence, the evaluated shoppers, seed, epochs and the script itself), so a second evaluation of the
same data reuses it instead of training SASRec again for hours; `whyrec eval sasrec` fills it ahead.
While a run trains, a claim file beside its future result names its process, so an evaluation of
the same inputs started meanwhile waits for that result instead of training a second SASRec.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from whyrec.core.catalog import Catalog
from whyrec.core.errors import ConfigError, WhyrecError

SCRIPT = Path(__file__).with_name("recbole_sasrec.py")
VENV_PYTHON = Path(".venv-recbole") / "bin" / "python"
SETUP_HINT = "run `bash scripts/setup-recbole.sh` (or pass --skip-sasrec to evaluate without the SASRec baseline)"


def _stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _has_recbole(python: str) -> bool:
    if not Path(python).exists():
        return False
    try:
        done = subprocess.run([python, "-c", "import recbole, torch"], check=False, capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def find_recbole_python(configured: str | None = None) -> str:
    """The Python of the RecBole venv: the configured one, else $WHYREC_RECBOLE_PYTHON, else the
    repo's .venv-recbole (beside the source checkout, or in the current directory)."""
    given = configured or os.environ.get("WHYREC_RECBOLE_PYTHON")
    if given:
        candidates = [given]
    else:
        repo = Path(__file__).resolve().parents[2]
        candidates = list(dict.fromkeys([str(repo / VENV_PYTHON), str(Path.cwd() / VENV_PYTHON)]))
    for python in candidates:
        if _has_recbole(python):
            return python
    raise ConfigError("no Python with RecBole found (tried: " + ", ".join(candidates) + "); " + SETUP_HINT + ", or set WHYREC_RECBOLE_PYTHON")


class SasrecRun:
    """One RecBole SASRec training, running in a subprocess from the moment it is made, so the caller
    can score its own methods meanwhile. `result()` waits for it; `stop()` ends it early. Use
    `start_sasrec` to make one."""

    def __init__(self, command: list[str], folder: tempfile.TemporaryDirectory, log: Callable[[str], None], cache: Path | None = None):
        self._folder = folder
        self.folder = Path(folder.name)  # inputs, RecBole's files and the result; removed when the run ends
        self._out = self.folder / "result.json"
        self._cache = cache
        self._claim = _claim_path(cache) if cache is not None else None
        self._tail: collections.deque[str] = collections.deque(maxlen=40)
        env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"), "PYTHONUNBUFFERED": "1"}
        try:
            self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=folder.name)
        except OSError as exc:
            folder.cleanup()
            raise ConfigError(f"cannot run {command[0]}: {exc}; " + SETUP_HINT) from None
        # A thread drains the log so the subprocess never blocks on a full pipe.
        self._reader = threading.Thread(target=self._read_log, args=(log,), daemon=True)
        self._reader.start()
        if self._claim is not None:  # another evaluation of the same inputs waits for this one
            self._claim.parent.mkdir(parents=True, exist_ok=True)
            self._claim.write_text(str(os.getpid()), encoding="utf-8")

    def _read_log(self, log: Callable[[str], None]) -> None:
        assert self._process.stderr is not None
        for line in self._process.stderr:
            line = line.rstrip("\n")
            self._tail.append(line)
            log(line)

    @property
    def running(self) -> bool:
        return self._process.poll() is None

    def result(self) -> dict[str, float]:
        try:
            code = self._process.wait()
            self._reader.join()
            if code != 0 or not self._out.exists():
                raise WhyrecError(f"SASRec baseline failed (exit code {code}); last lines of its log:\n" + "\n".join(self._tail))
            result = json.loads(self._out.read_text(encoding="utf-8"))
            if self._cache is not None:
                self._cache.parent.mkdir(parents=True, exist_ok=True)
                partial = self._cache.with_suffix(".partial")
                partial.write_text(json.dumps(result, indent=1), encoding="utf-8")
                partial.replace(self._cache)  # a reader never sees half a result
            return result
        finally:
            self.stop()  # interrupted while waiting: the subprocess must not outlive the caller

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._reader.join(timeout=30)
        self._folder.cleanup()
        if self._claim is not None:
            self._claim.unlink(missing_ok=True)


class ReusedSasrecRun:
    """A SASRec result from the cache: there already, or still being trained on the same inputs by
    another process (`owner`), whose result `result()` then waits for. Nothing of its own to stop."""

    def __init__(self, path: Path, owner: int | None = None, poll_seconds: float = 5.0):
        self.path, self.owner, self._poll = path, owner, poll_seconds

    @property
    def running(self) -> bool:
        return not self.path.exists() and self.owner is not None and _alive(self.owner)

    def result(self) -> dict[str, float]:
        while not self.path.exists():
            if self.owner is None or not _alive(self.owner):
                raise WhyrecError(
                    f"the SASRec run this evaluation waited for (process {self.owner}) ended without a result in {self.path}; "
                    "run the evaluation again to train SASRec itself"
                )
            time.sleep(self._poll)
        return {**json.loads(self.path.read_text(encoding="utf-8")), "reused_from": str(self.path)}

    def stop(self) -> None:
        pass


def _claim_path(cache: Path) -> Path:
    return cache.with_suffix(".training")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        pass
    return True


def _training_owner(claim: Path) -> int | None:
    """The process still training SASRec on these inputs, or None (no claim, or its process is gone)."""
    try:
        pid = int(claim.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return pid if pid != os.getpid() and _alive(pid) else None


def _cache_key(sequences: dict[str, list[str]], eval_user_ids: list[str], seed: int, epochs: int | None) -> str:
    digest = hashlib.sha256(json.dumps([sequences, list(eval_user_ids), seed, epochs], sort_keys=True).encode())
    digest.update(SCRIPT.read_bytes())
    return digest.hexdigest()[:24]


def start_sasrec(
    catalog: Catalog,
    eval_user_ids: list[str],
    python: str,
    seed: int = 0,
    epochs: int | None = None,
    log: Callable[[str], None] = _stderr_log,
    threads: int | None = None,
    cache_dir: Path | None = None,
    reuse: bool = True,
) -> SasrecRun | ReusedSasrecRun:
    """Start training SASRec on every shopper's sequence (RecBole's leave-one-out split: the last two
    items are held out, early stopping on the second-last); it then refits for the best epoch count
    on everything but the last item (as whyrec's own sequence model is) and scores `eval_user_ids` on
    their last item. The run's `result()` holds "ndcg@10", "recall@10", "recall@50", "mrr" of the
    refit model, plus "users", "train_seconds", "best_valid_ndcg@10", "epochs_run", "best_epoch",
    "refit_seconds", the early-stopped model's figures under "early_stopped_*" and RecBole's own
    (history not excluded) test figures under "recbole_unmasked_*".

    With `cache_dir`, a result cached there for the same inputs is reused (its "reused_from" names
    the file), one that another process is still training is waited for, and a new one is saved
    there when it finishes; `reuse=False` trains afresh and replaces the cached result. The thread count is not part of the key:
    it changes only the order of float sums, not what is trained."""
    known = set(catalog.users)
    missing = [u for u in eval_user_ids if u not in known]
    if missing:
        raise WhyrecError(f"SASRec baseline: {len(missing)} eval users are not in {catalog.name}, e.g. {missing[:3]}")
    sequences = {u: catalog.sequence(u) for u in catalog.users}
    name = re.sub(r"[^\w.-]", "_", catalog.name)
    cache = cache_dir / "sasrec" / f"{name}-{_cache_key(sequences, eval_user_ids, seed, epochs)}.json" if cache_dir else None
    if reuse and cache is not None and cache.exists():
        log(f"SASRec baseline: reusing the result of an earlier run on the same sequences, shoppers and seed ({cache})")
        return ReusedSasrecRun(cache)
    owner = _training_owner(_claim_path(cache)) if reuse and cache is not None else None
    if owner is not None:
        log(f"SASRec baseline: process {owner} is already training it on the same inputs; its result ({cache}) will be used")
        return ReusedSasrecRun(cache, owner)
    tmp = tempfile.TemporaryDirectory(prefix="whyrec-sasrec-")
    folder = Path(tmp.name)
    (folder / "sequences.json").write_text(json.dumps(sequences), encoding="utf-8")
    (folder / "users.json").write_text(json.dumps(list(eval_user_ids)), encoding="utf-8")
    command = [
        python, str(SCRIPT),
        "--sequences", str(folder / "sequences.json"),
        "--eval-users", str(folder / "users.json"),
        "--out", str(folder / "result.json"),
        "--seed", str(seed),
        "--workdir", str(folder / "recbole"),
    ]  # fmt: skip
    if epochs is not None:
        command += ["--epochs", str(epochs)]
    if threads is not None:
        command += ["--threads", str(threads)]
    log(f"SASRec baseline: training RecBole SASRec on {len(catalog.users)} shoppers ({python}"
        + (f", {threads} threads" if threads else "") + ")")
    return SasrecRun(command, tmp, log, cache)

