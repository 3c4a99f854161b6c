"""Pages that do not wait for the model: `whyrec serve` (in-process generator, shipped adapter,
background explainer) on the bundled sample shop or --data, measured from a load generator on
127.0.0.1.

    python bench/page_latency.py [--data DIR --shoppers 48] [-k 10]

1. cold pages: each shopper's first request (nothing stored), at 1, 4 and 16 concurrent shoppers,
   distinct shoppers throughout (the background explainer works meanwhile, as in production);
2. the background explainer is let finish (queue depth 0 on /metrics);
3. warm pages: the same shoppers again at 1, 4 and 16 concurrent (stored texts);
4. a fresh shopper the background had not reached: the share of its slate written by the model
   20 s after its first request, and when the whole slate was settled.

Writes bench/results/page_latency.{json,md} (`--name` another stem).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e_latency import amazon_slice, free_port, get_json, run_level, wait_for  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def metric(base: str, name: str) -> float:
    text = urllib.request.urlopen(f"{base}/metrics", timeout=30).read().decode()
    found = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(found.group(1)) if found else float("nan")


def wait_background(base: str, timeout_s: float) -> float:
    """Until no job waits or runs (a job popped from the queue still writes for up to half a minute)."""
    started = time.time()
    while time.time() - started < timeout_s:
        if metric(base, "whyrec_background_queue_depth") == 0 and metric(base, "whyrec_background_running") == 0:
            return time.time() - started
        time.sleep(1)
    raise SystemExit(f"the background explainer did not finish within {timeout_s:.0f}s")


def model_share(body: dict) -> float:
    items = body["items"]
    return sum(i["explanation"]["source"] == "llm" for i in items) / len(items) if items else 0.0


def fresh_shopper(base: str, user: str, k: int, window_s: float = 20.0, limit_s: float = 300.0) -> dict:
    """First request, then the page every second: the model's share at `window_s` and when settled."""
    started = time.perf_counter()
    seconds, first = get_json(f"{base}/api/shoppers/{user}/recommendations?k={k}")
    at_window, settled_s, body = None, None, first
    while time.perf_counter() - started < limit_s:
        elapsed = time.perf_counter() - started
        if at_window is None and elapsed >= window_s:
            at_window = model_share(body)
        if not any(i["explanation"]["pending"] for i in body["items"]):
            settled_s = elapsed
            break
        time.sleep(1)
        body = get_json(f"{base}/api/shoppers/{user}/recommendations?k={k}")[1]
    if at_window is None:
        at_window = model_share(body)
    return {
        "first_page_s": seconds, "first_page_model_share": model_share(first), "pending_on_first_page": sum(i["explanation"]["pending"] for i in first["items"]),
        f"model_share_at_{window_s:.0f}s": at_window, "settled_after_s": settled_s, "settled_model_share": model_share(body),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="default: the bundled sample shop")
    parser.add_argument("--shoppers", type=int, default=48, help="with --data: a slice of its first N shoppers")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--levels", default="1,4,16")
    parser.add_argument("--warm-rounds", type=int, default=3)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--name", default="page_latency", help="results file stem under bench/results/")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="whyrec-page-"))
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "GRADIO_ANALYTICS_ENABLED": "False", "WHYREC_PREWARM_SHOPPERS": "0",
           "WHYREC_DATABASE_URL": f"sqlite:///{scratch / 'whyrec.sqlite3'}"}
    if args.cache_dir:
        env["WHYREC_CACHE_DIR"] = str(args.cache_dir)
    command = [sys.executable, "-m", "whyrec.cli", "serve", "--port", str(port := free_port())]
    if args.data:
        data = amazon_slice(args.data, args.shoppers, scratch / "data")
        command += ["--data", str(data)]
        users = list(json.loads(next(data.glob("*.inter.json")).read_text()))
    else:
        from whyrec.core.config import Settings
        from whyrec.pipeline import load_data

        users = load_data(Settings()).users
    log = (scratch / "serve.log").open("w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    levels = [int(x) for x in args.levels.split(",")]
    try:
        print(f"starting whyrec serve on {base} (log {scratch / 'serve.log'})", file=sys.stderr)
        wait_for(f"{base}/api/health", process, 1800, "whyrec serve")
        model = get_json(f"{base}/api/health")[1]["model"]
        fresh_user, users = users[-1], users[:-1]
        need = sum(levels)
        if len(users) < need:
            raise SystemExit(f"cold pages need {need} distinct shoppers; the data has {len(users)}")
        cold, offset = [], 0
        with tqdm(total=need, desc="cold pages", unit="slate") as progress:
            for c in levels:
                cold.append(run_level(base, users[offset : offset + c], c, 1, args.k, progress))
                offset += c
        background_s = wait_background(base, 3600)
        served = users[:offset]
        warm = []
        with tqdm(total=sum(levels) * args.warm_rounds, desc="warm pages", unit="slate") as progress:
            for c in levels:
                warm.append(run_level(base, served, c, args.warm_rounds, args.k, progress))
        fresh = fresh_shopper(base, fresh_user, args.k)
        hit_rate = metric(base, "whyrec_explanation_hit_rate")
        rss_kb = int(next(line.split()[1] for line in Path(f"/proc/{process.pid}/status").read_text().splitlines() if line.startswith("VmRSS")))
    finally:
        process.terminate()
        process.wait(timeout=60)

    def share(level: dict) -> float:
        sources = level["explanation_sources"]
        return sources.get("llm", 0) / max(1, sum(sources.values()))

    report = {
        "command": " ".join(["python", "bench/page_latency.py", *sys.argv[1:]]),
        "data": str(args.data or "bundled sample shop"), "k": args.k, "model": model,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU",
        "cold": cold, "background_finished_after_s": background_s, "warm": warm,
        "model_share_first_view": [share(level) for level in cold], "model_share_after_background": [share(level) for level in warm],
        "fresh_shopper": fresh, "explanation_hit_rate": hit_rate, "server_rss_mb": round(rss_kb / 1024),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(report, indent=2))
    lines = [
        f"# Page latency without waiting for the model ({report['data']}, slate of {args.k})", "",
        f"`{report['command']}` — {report['machine']}, model {model}, server RSS {report['server_rss_mb']} MB", "",
        "| page | concurrent | requests | p50 s | p95 s | max s | model-written share | errors |", "|---|---|---|---|---|---|---|---|",
    ]
    for label, rows in (("cold", cold), ("warm", warm)):
        for row in rows:
            lines.append(f"| {label} | {row['concurrency']} | {row['requests']} | {row['p50_s']:.3f} | {row['p95_s']:.3f} | {row['max_s']:.3f} | {share(row):.2f} | {len(row['errors'])} |")
    lines += ["", f"Background explainer finished {background_s:.0f} s after the last cold page; explanation hit rate {hit_rate:.3f}.",
              f"Fresh shopper: first page {fresh['first_page_s']:.2f} s with {fresh['pending_on_first_page']} pending; model share at 20 s {fresh['model_share_at_20s']:.2f}; "
              f"settled after {fresh['settled_after_s'] if fresh['settled_after_s'] is not None else 'n/a'} s with model share {fresh['settled_model_share']:.2f}."]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
