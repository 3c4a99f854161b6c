"""A MiniLM cross-encoder that reads (recent history, candidate) and returns a relevance score.

Attribution is counterfactual: each recent history item is left out in turn and the candidate
re-scored, all in one batch, so an attribution costs one forward pass per history item.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from whyrec.catalog import Item
from whyrec.errors import ConfigError
from whyrec.schema import Attribution, Candidate, RankedItem

CHECKPOINT_META = "whyrec_ranker.json"
TITLE_CHARS = 70


def history_text(history: list[Item]) -> str:
    """Most recent first, short: the ranker reads titles and leaf categories, not descriptions."""
    parts = []
    for item in reversed(history):
        label = item.title[:TITLE_CHARS]
        if item.category:
            label += f" ({item.category})"
        parts.append(label)
    return " ; ".join(parts) if parts else "(no history)"


def candidate_text(item: Item) -> str:
    parts = [item.title[:TITLE_CHARS * 2]]
    if item.brand:
        parts.append(item.brand)
    if item.categories:
        parts.append(" > ".join(item.categories[-2:]))
    return " | ".join(parts)


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


class CrossEncoderRanker:
    def __init__(self, model, tokenizer, device: str = "cpu", history_window: int = 5, max_length: int = 96, batch_size: int = 64):
        self.model = model.to(device)
        self.model.eval()
        self.tokenizer = tokenizer
        self.device = device
        self.history_window = history_window
        self.max_length = max_length
        self.batch_size = batch_size
        # bf16 halves CPU time where the CPU has bf16 units (AVX512-BF16/AMX) and on recent GPUs.
        self.use_bf16 = (torch.cuda.is_bf16_supported() if device == "cuda" else cpu_has_bf16())

    @classmethod
    def from_base(cls, encoder_path: str, device: str = "cpu", **kwargs) -> "CrossEncoderRanker":
        """A fresh scoring head on the encoder: untrained, to be fine-tuned with train_ranker."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the "newly initialized head" report is expected here
        try:
            model = AutoModelForSequenceClassification.from_pretrained(encoder_path, num_labels=1)
        finally:
            hf_logging.set_verbosity(verbosity)
        return cls(model, AutoTokenizer.from_pretrained(encoder_path), device, **kwargs)

    @classmethod
    def load(cls, folder: Path, device: str = "cpu") -> "CrossEncoderRanker":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        meta_file = folder / CHECKPOINT_META
        if not meta_file.exists():
            raise ConfigError(f"no ranker checkpoint at {folder} (missing {CHECKPOINT_META}); run `whyrec train --data DIR`")
        try:
            meta = json.loads(meta_file.read_text())
            model = AutoModelForSequenceClassification.from_pretrained(folder)
            tokenizer = AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the ranker checkpoint at {folder} ({exc}); run `whyrec train --data DIR` to rebuild it") from None
        return cls(model, tokenizer, device, history_window=meta["history_window"], max_length=meta["max_length"])

    def save(self, folder: Path, metadata: dict) -> None:
        """Write the checkpoint beside `folder` and swap it in, so a crash never leaves half a checkpoint."""
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".ranker-", dir=folder.parent))
        try:
            self.model.save_pretrained(staging)
            self.tokenizer.save_pretrained(staging)
            meta = {"history_window": self.history_window, "max_length": self.max_length, **metadata}
            (staging / CHECKPOINT_META).write_text(json.dumps(meta, indent=2))
            old = folder.with_name(folder.name + ".old")
            if folder.exists():
                os.replace(folder, old)
            os.replace(staging, folder)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def encode(self, queries: list[str], docs: list[str]):
        return self.tokenizer(queries, docs, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt").to(self.device)

    def forward(self, batch) -> torch.Tensor:
        with torch.autocast(self.device if self.device == "cuda" else "cpu", dtype=torch.bfloat16, enabled=self.use_bf16):
            return self.model(**batch).logits.squeeze(-1).float()

    @torch.no_grad()
    def score_pairs(self, queries: list[str], docs: list[str]) -> np.ndarray:
        self.model.eval()
        scores = []
        for start in range(0, len(queries), self.batch_size):
            batch = self.encode(queries[start : start + self.batch_size], docs[start : start + self.batch_size])
            scores.append(self.forward(batch).cpu().numpy())
        return np.concatenate(scores) if scores else np.zeros(0, dtype=np.float32)

    def score(self, history: list[Item], candidates: list[Item]) -> np.ndarray:
        query = history_text(history[-self.history_window :])
        return self.score_pairs([query] * len(candidates), [candidate_text(c) for c in candidates])

    def rank(
        self,
        history: list[Item],
        candidates: list[Candidate],
        items: Mapping[str, Item],
        attribute: set[str] | int = 0,
    ) -> list[RankedItem]:
        """Score and sort candidates. `attribute` is the number of top items (or the set of item ids)
        that get counterfactual attributions."""
        scores = self.score(history, [items[c.item_id] for c in candidates])
        order = np.argsort(-scores, kind="stable")
        ranked_ids = [candidates[i].item_id for i in order]
        wanted = set(ranked_ids[:attribute]) if isinstance(attribute, int) else set(attribute)
        by_id = {c.item_id: float(s) for c, s in zip(candidates, scores)}
        attributions = self.attribute(history, [items[i] for i in ranked_ids if i in wanted], by_id)
        ranked = []
        for rank, i in enumerate(order, start=1):
            c = candidates[i]
            ranked.append(
                RankedItem(
                    item_id=c.item_id,
                    rank=rank,
                    retrieval_score=c.score,
                    ranker_score=float(scores[i]),
                    matched_history=c.matched_history,
                    attributions=attributions.get(c.item_id, ()),
                    candidates_scored=len(candidates),
                )
            )
        return ranked

    def attribute(self, history: list[Item], targets: list[Item], slate_scores: Mapping[str, float]) -> dict[str, tuple[Attribution, ...]]:
        """Leave-one-out over the recent history, for each target, in one batch. `rank_without` places
        the lowered score among the other candidates' full-history scores."""
        recent = history[-self.history_window :]
        if not targets or len(recent) < 2:
            # With a single history item there is nothing to compare against: that item is the whole reason.
            return {t.item_id: tuple(Attribution(h.item_id, 1.0) for h in recent) for t in targets}
        queries, docs = [], []
        for target in targets:
            queries.append(history_text(recent))
            docs.append(candidate_text(target))
            for left_out in range(len(recent)):
                queries.append(history_text(recent[:left_out] + recent[left_out + 1 :]))
                docs.append(candidate_text(target))
        scores = self.score_pairs(queries, docs).reshape(len(targets), len(recent) + 1)
        result = {}
        for target, row in zip(targets, scores):
            full = row[0]
            others = np.array([s for item_id, s in slate_scores.items() if item_id != target.item_id])
            attributions = [
                Attribution(h.item_id, float(full - without), int(1 + np.sum(others > without)))
                for h, without in zip(recent, row[1:])
            ]
            attributions.sort(key=lambda a: -a.contribution)
            result[target.item_id] = tuple(attributions)
        return result
