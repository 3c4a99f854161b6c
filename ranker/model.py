"""A MiniLM cross-encoder that reads (recent history, candidate) and returns a relevance score.

The score is the cross-encoder's logit plus a learned weight times the candidate's retrieval
score: at the start of training the ranker reproduces the retrieval order, and fine-tuning
moves it from there instead of from a random head.

Attribution is counterfactual: each recent history item is left out in turn and the candidate
re-scored by the whole ranker (its retrieval score recomputed from the shorter history too), all in
one batch, so an attribution costs one forward pass per history item.
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
from whyrec.schema import Attribution, Candidate, CandidateSource, RankedItem

CHECKPOINT_META = "whyrec_ranker.json"
TITLE_CHARS = 70
INITIAL_RETRIEVAL_WEIGHT = 20.0  # a cosine gap of 0.05 between candidates is worth one logit


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
    def __init__(
        self,
        model,
        tokenizer,
        device: str = "cpu",
        history_window: int = 5,
        max_length: int = 96,
        batch_size: int = 64,
        retrieval_weight: float = INITIAL_RETRIEVAL_WEIGHT,
    ):
        self.model = model.to(device)
        self.retrieval_weight = torch.nn.Parameter(torch.tensor(float(retrieval_weight), device=device))
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
            settings = {key: meta[key] for key in ("history_window", "max_length", "retrieval_weight")}
            model = AutoModelForSequenceClassification.from_pretrained(folder)
            tokenizer = AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"cannot read the ranker checkpoint at {folder} ({type(exc).__name__}: {exc}); run `whyrec train --data DIR` to rebuild it") from None
        return cls(model, tokenizer, device, **settings)

    def save(self, folder: Path, metadata: dict) -> None:
        """Write the checkpoint beside `folder` and swap it in, so a crash never leaves half a checkpoint."""
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".ranker-", dir=folder.parent))
        try:
            self.model.save_pretrained(staging)
            self.tokenizer.save_pretrained(staging)
            meta = {
                "history_window": self.history_window,
                "max_length": self.max_length,
                "retrieval_weight": float(self.retrieval_weight.detach()),
                **metadata,
            }
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

    def forward(self, batch, retrieval_scores: list[float]) -> torch.Tensor:
        with torch.autocast(self.device if self.device == "cuda" else "cpu", dtype=torch.bfloat16, enabled=self.use_bf16):
            logits = self.model(**batch).logits.squeeze(-1).float()
        return logits + self.retrieval_weight * torch.tensor(retrieval_scores, dtype=torch.float32, device=logits.device)

    @torch.no_grad()
    def score_pairs(self, queries: list[str], docs: list[str], retrieval_scores: list[float]) -> np.ndarray:
        self.model.eval()
        scores = []
        for start in range(0, len(queries), self.batch_size):
            end = start + self.batch_size
            batch = self.encode(queries[start:end], docs[start:end])
            scores.append(self.forward(batch, retrieval_scores[start:end]).cpu().numpy())
        return np.concatenate(scores) if scores else np.zeros(0, dtype=np.float32)

    def score(self, history: list[Item], candidates: list[Item], retrieval_scores: list[float]) -> np.ndarray:
        query = history_text(history[-self.history_window :])
        return self.score_pairs([query] * len(candidates), [candidate_text(c) for c in candidates], list(retrieval_scores))

    def rank(
        self,
        history: list[Item],
        candidates: list[Candidate],
        items: Mapping[str, Item],
        attribute: set[str] | int = 0,
        source: CandidateSource | None = None,
    ) -> list[RankedItem]:
        """Score and sort candidates. `attribute` is the number of top items (or the set of item ids)
        that get counterfactual attributions; `source` recomputes retrieval scores for them (without
        it the retrieval score is held fixed and only the cross-encoder's reading is attributed)."""
        scores = self.score(history, [items[c.item_id] for c in candidates], [c.score for c in candidates])
        order = np.argsort(-scores, kind="stable")
        ranked_ids = [candidates[i].item_id for i in order]
        wanted = set(ranked_ids[:attribute]) if isinstance(attribute, int) else set(attribute)
        by_id = {c.item_id: float(s) for c, s in zip(candidates, scores)}
        retrieval = {c.item_id: c.score for c in candidates}
        targets = [(items[i], retrieval[i]) for i in ranked_ids if i in wanted]
        attributions = self.attribute(history, targets, by_id, source)
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

    def attribute(
        self,
        history: list[Item],
        targets: list[tuple[Item, float]],
        slate_scores: Mapping[str, float],
        source: CandidateSource | None = None,
    ) -> dict[str, tuple[Attribution, ...]]:
        """Leave-one-out over the recent history, for each (target, retrieval score), in one batch.
        `rank_without` places the lowered score among the other candidates' full-history scores."""
        recent = history[-self.history_window :]
        if not targets or len(recent) < 2:
            # With a single history item there is nothing to compare against: that item is the whole reason.
            return {t.item_id: tuple(Attribution(h.item_id, 1.0) for h in recent) for t, _ in targets}
        queries, docs, retrieval = [], [], []
        variants = [recent] + [recent[:i] + recent[i + 1 :] for i in range(len(recent))]
        for target, retrieval_score in targets:
            queries += [history_text(v) for v in variants]
            docs += [candidate_text(target)] * len(variants)
            if source is None:
                retrieval += [retrieval_score] * len(variants)
            else:
                retrieval += [retrieval_score] + [source.score([h.item_id for h in v], target.item_id) for v in variants[1:]]
        scores = self.score_pairs(queries, docs, retrieval).reshape(len(targets), len(recent) + 1)
        result = {}
        for (target, _), row in zip(targets, scores):
            full = row[0]
            others = np.array([s for item_id, s in slate_scores.items() if item_id != target.item_id])
            attributions = [
                Attribution(h.item_id, float(full - without), int(1 + np.sum(others > without)))
                for h, without in zip(recent, row[1:])
            ]
            attributions.sort(key=lambda a: -a.contribution)
            result[target.item_id] = tuple(attributions)
        return result
