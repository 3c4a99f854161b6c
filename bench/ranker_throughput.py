"""Ranker scoring throughput: whyrec's CrossEncoderRanker.score_pairs (fp32, bf16 autocast where
the CPU has bf16 units, and the int8 serving ranker) against sentence_transformers.CrossEncoder.predict
on the same checkpoint, the same (history, candidate) pairs, the same batch size and max length, in
one run; and how often int8 keeps fp32's top pick and top-10 for each shopper's candidates.

    python bench/ranker_throughput.py --data ../shared/data/amazon-office [--pairs 2000]

Needs a trained ranker for the data (`whyrec train --data DIR`). Pairs are the top retrieval
candidates of random test shoppers, as the ranker sees them in serving. Writes
bench/results/ranker_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from pathlib import Path

import numpy as np
import torch

from whyrec.core.config import Settings
from whyrec.core.split import leave_one_out
from whyrec.pipeline import load_data, load_models, ranker_folder
from whyrec.ranker.model import candidate_text, history_text

RESULTS = Path(__file__).resolve().parent / "results"


def pairs_for(settings: Settings, count: int, seed: int):
    catalog = load_data(settings)
    retriever, ranker = load_models(settings, catalog, trainable=True)
    cases = leave_one_out(catalog).test
    random.Random(seed).shuffle(cases)
    queries, docs, features, groups = [], [], [], []
    for case in cases:
        query = history_text([catalog.items[i] for i in case.history[-ranker.history_window :]])
        candidates = retriever.candidates(case.history, settings.candidates)
        if len(queries) + len(candidates) > count:
            break
        groups.append((len(queries), len(candidates)))
        for candidate in candidates:
            queries.append(query)
            docs.append(candidate_text(catalog.items[candidate.item_id]))
            features.append(candidate.features)
    return catalog, ranker, queries, docs, np.array(features, dtype=np.float32), groups


def agreement(exact: np.ndarray, fast: np.ndarray, groups: list[tuple[int, int]], k: int = 10) -> dict:
    """Per shopper's candidates: the same top pick, and the share of fp32's top k that stays in the top k."""
    top1, topk = [], []
    for start, size in groups:
        a, b = exact[start : start + size], fast[start : start + size]
        top1.append(int(np.argmax(a) == np.argmax(b)))
        topk.append(len(set(np.argsort(-a)[:k]) & set(np.argsort(-b)[:k])) / min(k, size))
    return {"shoppers": len(groups), "same_top1": round(float(np.mean(top1)), 4), f"top{k}_overlap": round(float(np.mean(topk)), 4)}


def timed(fn, repeats: int) -> tuple[float, np.ndarray]:
    """Best wall time of `repeats` runs (after one warm-up on the whole input), and the scores."""
    out = fn()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - started)
    return best, np.asarray(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--note", default="", help="What else ran on the machine, recorded with the results.")
    args = parser.parse_args()

    from sentence_transformers import CrossEncoder

    settings = Settings(data=args.data, auto_train=False)
    catalog, ranker, queries, docs, features, groups = pairs_for(settings, args.pairs, args.seed)
    ranker.batch_size = args.batch_size
    folder = ranker_folder(settings, catalog)
    baseline = CrossEncoder(str(folder), num_labels=1, max_length=ranker.max_length, device=ranker.device)
    pairs = list(zip(queries, docs))
    feature_part = features @ ranker.feature_weights.detach().cpu().numpy()

    runs = {}
    seconds, base_scores = timed(
        lambda: baseline.predict(pairs, batch_size=args.batch_size, activation_fn=torch.nn.Identity(), show_progress_bar=False), args.repeats
    )
    runs["sentence_transformers.CrossEncoder.predict (fp32)"] = seconds
    bf16 = ranker.use_bf16
    ranker.use_bf16 = False
    seconds, fp32_scores = timed(lambda: ranker.score_pairs(queries, docs, features), args.repeats)
    runs["whyrec CrossEncoderRanker.score_pairs (fp32)"] = seconds
    ranker.use_bf16 = bf16
    if bf16:
        seconds, bf16_scores = timed(lambda: ranker.score_pairs(queries, docs, features), args.repeats)
        runs["whyrec CrossEncoderRanker.score_pairs (bf16 autocast)"] = seconds
    else:
        bf16_scores = fp32_scores
    import copy

    int8 = copy.deepcopy(ranker).for_serving("int8")
    seconds, int8_scores = timed(lambda: int8.score_pairs(queries, docs, features), args.repeats)
    runs["whyrec CrossEncoderRanker.score_pairs (int8, the CPU serving default)"] = seconds

    result = {
        "data": catalog.name,
        "pairs": len(pairs),
        "batch_size": args.batch_size,
        "max_length": ranker.max_length,
        "threads": torch.get_num_threads(),
        "device": ranker.device,
        "cpu": platform.processor() or platform.machine(),
        "bf16": bf16,
        "pairs_per_second": {name: round(len(pairs) / s, 1) for name, s in runs.items()},
        # Same model, same pairs: whyrec's cross-encoder part must give the baseline's logits.
        "max_abs_logit_difference_fp32": float(np.abs((fp32_scores - feature_part) - base_scores).max()),
        "max_abs_logit_difference_bf16": float(np.abs((bf16_scores - feature_part) - base_scores).max()),
        "max_abs_logit_difference_int8": float(np.abs((int8_scores - feature_part) - base_scores).max()),
        "int8_vs_fp32_order": agreement(fp32_scores, int8_scores, groups),
        "command": f"python bench/ranker_throughput.py --data {args.data} --pairs {args.pairs} --repeats {args.repeats}",
        "note": args.note,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ranker_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Ranker throughput",
        "",
        f"{len(pairs)} (history, candidate) pairs from {catalog.name}, batch {args.batch_size}, max length {ranker.max_length}, "
        f"{result['threads']} threads on {os.cpu_count()} cores ({result['device']}); best of {args.repeats} runs after a warm-up.",
        "",
        "| scorer | pairs/s |",
        "|---|---|",
        *[f"| {name} | {value} |" for name, value in result["pairs_per_second"].items()],
        "",
        f"Largest logit difference to CrossEncoder.predict: fp32 {result['max_abs_logit_difference_fp32']:.2g}, "
        f"bf16 {result['max_abs_logit_difference_bf16']:.2g}, int8 {result['max_abs_logit_difference_int8']:.2g}.",
        f"int8 against fp32 on {result['int8_vs_fp32_order']['shoppers']} shoppers' candidates: same top pick "
        f"{result['int8_vs_fp32_order']['same_top1']:.3f}, top-10 overlap {result['int8_vs_fp32_order']['top10_overlap']:.3f}.",
        "",
        f"Command: `{result['command']}`",
        *([f"Note: {args.note}"] if args.note else []),
    ]
    (RESULTS / "ranker_throughput.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
