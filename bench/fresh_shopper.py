"""A shopper the background explainer had not reached, on `whyrec demo` as a new user starts it
(bundled sample shop, shipped adapter, in-process generator, pre-warm of 12 shoppers running):
their first page, then the page every second, over the JSON API.

    python bench/fresh_shopper.py [--runs 3] [--cache-dir DIR]

Each run starts the demo on an empty database (nothing stored), asks for the shop's last shopper
right after it is healthy, and records how long the first page took, how many of the 10 reasons
were the model's 20 s after the first request, when 8 of 10 were, and when the slate settled.
Writes bench/results/fresh_shopper.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e_latency import free_port, get_json, wait_for  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def one_run(user: str, k: int, cache_dir: Path | None, window_s: float = 20.0, limit_s: float = 120.0) -> dict:
    scratch = Path(tempfile.mkdtemp(prefix="whyrec-fresh-"))
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "GRADIO_ANALYTICS_ENABLED": "False", "WHYREC_DATABASE_URL": f"sqlite:///{scratch / 'whyrec.sqlite3'}"}
    for name in ("WHYREC_DATA", "WHYREC_SHOP_K", "WHYREC_PREWARM_SHOPPERS", "WHYREC_LLM_URL", "WHYREC_ADAPTER"):
        env.pop(name, None)
    if cache_dir:
        env["WHYREC_CACHE_DIR"] = str(cache_dir)
    port = free_port()
    log = (scratch / "demo.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "whyrec.cli", "demo", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{base}/api/health", process, 1800, "whyrec demo")
        url = f"{base}/api/shoppers/{user}/recommendations?k={k}"
        started = time.perf_counter()
        first_s, body = get_json(url)
        trace = [(round(first_s, 2), _model(body))]
        while time.perf_counter() - started < limit_s and any(i["explanation"]["pending"] for i in body["items"]):
            time.sleep(1)
            body = get_json(url)[1]
            trace.append((round(time.perf_counter() - started, 2), _model(body)))
        at_window = max((m for t, m in trace if t <= window_s), default=0)
        eight = next((t for t, m in trace if m >= 8), None)
        return {"first_page_s": round(first_s, 2), f"model_at_{window_s:.0f}s": at_window, "eight_of_ten_s": eight,
                "settled_s": trace[-1][0] if not any(i["explanation"]["pending"] for i in body["items"]) else None,
                "settled_model": trace[-1][1], "trace": trace}
    finally:
        process.terminate()
        process.wait(timeout=60)
        log.close()


def _model(body: dict) -> int:
    return sum(i["explanation"]["source"] == "llm" for i in body["items"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args()
    from whyrec.core.config import Settings
    from whyrec.pipeline import load_data

    user = load_data(Settings()).users[-1]  # the pre-warm takes the first 12
    runs = []
    for n in range(args.runs):
        runs.append(one_run(user, 10, args.cache_dir))
        print(f"run {n + 1}: {json.dumps({k: v for k, v in runs[-1].items() if k != 'trace'})}", file=sys.stderr)
    report = {"command": " ".join(["python", "bench/fresh_shopper.py", *sys.argv[1:]]), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU",
              "shopper": user, "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fresh_shopper.json").write_text(json.dumps(report, indent=2))
    lines = [f"# A fresh shopper on `whyrec demo` while its pre-warm runs (slate of 10, JSON API)", "",
             f"`{report['command']}` — {report['machine']}, shopper {user}", "",
             "| run | first page s | model-written at 20 s | 8 of 10 after s | settled after s | model-written when settled |", "|---|---|---|---|---|---|"]
    for n, run in enumerate(runs, 1):
        lines.append(f"| {n} | {run['first_page_s']:.2f} | {run['model_at_20s']} / 10 | {run['eight_of_ten_s']} | {run['settled_s']} | {run['settled_model']} / 10 |")
    (RESULTS / "fresh_shopper.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
