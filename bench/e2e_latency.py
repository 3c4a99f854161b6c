"""End-to-end latency of `whyrec serve` with the vLLM backend, measured from a load generator on
127.0.0.1: recommendations with explanations for a slate of 10 at 1, 4 and 16 concurrent shoppers
(p50 / p95 latency, throughput), and the time to the first explanation when streaming.

    python bench/e2e_latency.py --data ../shared/data/amazon-office --shoppers 80

starts `whyrec llm serve` (vLLM) and `whyrec serve --llm-url ...` itself, on a slice of the first
--shoppers shoppers of the data (their models are trained first if the cache has none), and writes
bench/results/e2e_latency.{json,md}. --url measures an already running server instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm import tqdm

RESULTS = Path(__file__).resolve().parent / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, seconds: float, what: str) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with code {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=5).read()
            return
        except OSError:
            time.sleep(2)
    raise SystemExit(f"{what} did not answer at {url} within {seconds:.0f}s")


def amazon_slice(data: Path, shoppers: int, folder: Path) -> Path:
    """The first `shoppers` shoppers of an Amazon-format folder and the items they touched."""
    item_file = next(data.glob("*.item.json"))
    inter_file = next(data.glob("*.inter.json"))
    items = json.loads(item_file.read_text())
    inter = dict(list(json.loads(inter_file.read_text()).items())[:shoppers])
    used = {str(i) for seq in inter.values() for i in seq}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / item_file.name).write_text(json.dumps({k: v for k, v in items.items() if k in used}))
    (folder / inter_file.name).write_text(json.dumps(inter))
    return folder


def start_stack(data: Path, env: dict[str, str], scratch: Path, llm_timeout: float, processes: list[subprocess.Popen]) -> str:
    """Start `whyrec llm serve` (vLLM) and `whyrec serve --llm-url ...` on 127.0.0.1 with the store
    in `scratch`; append both to `processes` (vLLM first) as they start; return the API's base URL."""
    llm_port, port = free_port(), free_port()
    vllm_log = (scratch / "vllm.log").open("w")
    processes.append(subprocess.Popen([sys.executable, "-m", "whyrec.cli", "llm", "serve", "--port", str(llm_port)], env=env, stdout=vllm_log, stderr=subprocess.STDOUT))
    print(f"starting vLLM on 127.0.0.1:{llm_port} (log {scratch / 'vllm.log'})", file=sys.stderr)
    wait_for(f"http://127.0.0.1:{llm_port}/v1/models", processes[-1], 600, "vLLM")
    serve_env = {**env, "WHYREC_DATABASE_URL": f"sqlite:///{scratch / 'whyrec.sqlite3'}", "WHYREC_LLM_TIMEOUT_S": str(llm_timeout)}
    serve_log = (scratch / "serve.log").open("w")
    processes.append(subprocess.Popen(
        [sys.executable, "-m", "whyrec.cli", "serve", "--data", str(data), "--llm-url", f"http://127.0.0.1:{llm_port}/v1", "--port", str(port)],
        env=serve_env, stdout=serve_log, stderr=subprocess.STDOUT,
    ))
    base = f"http://127.0.0.1:{port}"
    print(f"starting whyrec serve on {base} (log {scratch / 'serve.log'})", file=sys.stderr)
    wait_for(f"{base}/api/health", processes[-1], 1800, "whyrec serve")
    return base


def get_json(url: str) -> tuple[float, dict]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=900) as response:
        body = json.load(response)
    return time.perf_counter() - started, body


def first_explanation(url: str) -> tuple[float, float]:
    """(seconds to the first explanation line, seconds to the end) of a streamed slate."""
    started = time.perf_counter()
    first = None
    with urllib.request.urlopen(url, timeout=900) as response:
        for line in response:
            if first is None and json.loads(line).get("event") == "explanation":
                first = time.perf_counter() - started
    return first, time.perf_counter() - started


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def run_level(base: str, users: list[str], concurrency: int, requests_per_shopper: int, k: int, progress: tqdm) -> dict:
    """`concurrency` shoppers at once, each asking for its slate `requests_per_shopper` times in a row."""
    latencies: list[float] = []
    sources: dict[str, int] = {}
    errors: list[str] = []
    lock = threading.Lock()

    def shopper(user: str) -> None:
        for _ in range(requests_per_shopper):
            try:
                seconds, body = get_json(f"{base}/api/shoppers/{user}/recommendations?k={k}")
            except OSError as exc:  # counted, not fatal: the table reports errors per level
                with lock:
                    errors.append(f"{user}: {exc}")
                    progress.update(1)
                continue
            with lock:
                latencies.append(seconds)
                for item in body["items"]:
                    sources[item["explanation"]["source"]] = sources.get(item["explanation"]["source"], 0) + 1
                progress.update(1)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(shopper, users[:concurrency]))
    wall = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "requests": len(latencies) + len(errors),
        "errors": errors,
        "p50_s": statistics.median(latencies) if latencies else float("nan"),
        "p95_s": percentile(latencies, 95) if latencies else float("nan"),
        "max_s": max(latencies, default=float("nan")),
        "throughput_slates_per_s": len(latencies) / wall,
        "throughput_explanations_per_s": sum(sources.values()) / wall,
        "wall_s": wall,
        "explanation_sources": sources,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/amazon-office"))
    parser.add_argument("--shoppers", type=int, default=80, help="slice of the data's first N shoppers (0 = all)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="WHYREC_CACHE_DIR for the server (trained models are reused from it)")
    parser.add_argument("--url", default=None, help="measure a running whyrec serve instead of starting one")
    parser.add_argument("--levels", default="1,4,16")
    parser.add_argument("--requests", default="3,2,1", help="requests per shopper at each level")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--stream-requests", type=int, default=3)
    parser.add_argument("--llm-timeout", type=float, default=600.0, help="WHYREC_LLM_TIMEOUT_S for the server: long, so queueing shows as latency, not as errors")
    args = parser.parse_args()

    processes: list[subprocess.Popen] = []
    scratch = Path(tempfile.mkdtemp(prefix="whyrec-e2e-"))
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    if args.cache_dir:
        env["WHYREC_CACHE_DIR"] = str(args.cache_dir)
    base = args.url
    model = None
    try:
        if base is None:
            data = amazon_slice(args.data, args.shoppers, scratch / "data") if args.shoppers else args.data
            base = start_stack(data, env, scratch, args.llm_timeout, processes)
        health = get_json(f"{base}/api/health")[1]
        model = health["model"]
        users = [u for u in json.loads(next((args.data).glob("*.inter.json")).read_text())][: max(args.shoppers or 10**9, 1)]
        levels = [int(x) for x in args.levels.split(",")]
        per_shopper = [int(x) for x in args.requests.split(",")]
        total = sum(c * r for c, r in zip(levels, per_shopper))
        get_json(f"{base}/api/shoppers/{users[-1]}/recommendations?k={args.k}")  # warm-up, not measured
        with tqdm(total=total, desc="slates", unit="slate") as progress:
            results = [run_level(base, users, c, r, args.k, progress) for c, r in zip(levels, per_shopper)]
        streamed = [first_explanation(f"{base}/api/shoppers/{users[i]}/recommendations/stream?k={args.k}") for i in range(args.stream_requests)]
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(timeout=60)

    report = {
        "command": " ".join(["python", "bench/e2e_latency.py", *sys.argv[1:]]),
        "data": f"{args.data} (first {args.shoppers} shoppers)" if args.shoppers else str(args.data),
        "k": args.k,
        "model": model,
        "backend": "vLLM (OpenAI API), started by `whyrec llm serve`",
        "llm_timeout_s": args.llm_timeout,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, no GPU" if not os.path.exists("/dev/nvidia0") else "GPU",
        "levels": results,
        "streaming": {
            "requests": len(streamed),
            "first_explanation_p50_s": statistics.median(f for f, _ in streamed),
            "complete_p50_s": statistics.median(t for _, t in streamed),
            "samples": [{"first_explanation_s": f, "complete_s": t} for f, t in streamed],
        },
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "e2e_latency.json").write_text(json.dumps(report, indent=2))
    lines = [
        f"# End-to-end latency: `whyrec serve` + vLLM, slate of {args.k} with explanations",
        "",
        f"Data: {report['data']}; model: {model}; {report['machine']}. Command: `{report['command']}`",
        "",
        "| concurrent shoppers | requests | errors | p50 (s) | p95 (s) | slates/s | explanations/s | LLM / template texts |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        src = r["explanation_sources"]
        lines.append(f"| {r['concurrency']} | {r['requests']} | {len(r['errors'])} | {r['p50_s']:.1f} | {r['p95_s']:.1f} | {r['throughput_slates_per_s']:.3f} | {r['throughput_explanations_per_s']:.2f} | {src.get('llm', 0)} / {src.get('template', 0)} |")
    s = report["streaming"]
    lines += ["", f"Streaming (`/recommendations/stream`, one shopper at a time, {s['requests']} requests): first explanation after {s['first_explanation_p50_s']:.1f} s (p50), whole slate {s['complete_p50_s']:.1f} s (p50)."]
    (RESULTS / "e2e_latency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
