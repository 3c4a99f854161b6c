"""A MiniLM cross-encoder that reads (recent history, candidate) and returns a relevance score.

The score is the cross-encoder's logit plus learned weights times the candidate's retrieval
features (the standardised score of each retrieval source). The weights start from the retrieval
fusion weights, so at the start of training the ranker reproduces the retrieval order, and
fine-tuning moves it from there instead of from a random head.

Attribution is counterfactual: each recent history item is left out in turn and the candidate
re-scored by the whole ranker (its retrieval features recomputed from the shorter history too), all
in one batch, so an attribution costs one forward pass per history item.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Literal, Mapping

import numpy as np
import torch

from whyrec.core.catalog import Item
from whyrec.core.errors import ConfigError
from whyrec.core.hardware import cpu_has_amx_bf16
from whyrec.core.schema import Attribution, Candidate, CandidateSource, RankedItem
from whyrec.core.storage import replaced_folder

CHECKPOINT_META = "whyrec_ranker.json"
TITLE_CHARS = 70
# Fusion weights times this are the starting feature weights: one standard deviation of the fused
# retrieval score is then worth a few logits, more than the untrained head's noise.
FEATURE_SCALE = 3.0


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


Precision = Literal["auto", "fp32", "bf16", "int8"]


def serving_precision(precision: Precision, device: str) -> str:
    """What "auto" serves with: int8 on a CPU (dynamic int8 Linear layers ranked a cold page 1.4x as
    fast as fp32 and 1.9x as fast as bf16 autocast on an AVX512-BF16 CPU without AMX, with the same
    NDCG@10: README, "Ranker precision"), bf16 on a GPU that has it."""
    if precision != "auto":
        return precision
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "int8"


class CrossEncoderRanker:
    def __init__(
        self,
        model,
        tokenizer,
        device: str = "cpu",
        history_window: int = 5,
        max_length: int = 96,
        batch_size: int = 64,
        feature_names: tuple[str, ...] = (),
        feature_weights: list[float] | None = None,
    ):
        self.model = model.to(device)
        self.feature_names = tuple(feature_names)
        weights = feature_weights if feature_weights is not None else [FEATURE_SCALE] * len(self.feature_names)
        if len(weights) != len(self.feature_names):
            raise ValueError(f"{len(weights)} feature weights for {len(self.feature_names)} features")
        self.feature_weights = torch.nn.Parameter(torch.tensor(weights, dtype=torch.float32, device=device))
        self.model.eval()
        self.tokenizer = tokenizer
        self.device = device
        self.history_window = history_window
        self.max_length = max_length
        self.batch_size = batch_size
        # Training: bf16 autocast on recent GPUs and on CPUs with AMX tiles; AVX512-BF16 alone was
        # slower than fp32 for both training and scoring here (serving picks its own in for_serving).
        self.use_bf16 = (torch.cuda.is_bf16_supported() if device == "cuda" else cpu_has_amx_bf16())
        self.int8 = False
        self.reads_text = True  # False: a serving ranker whose text head is zero skips the encoder

    def for_serving(self, precision: Precision = "auto") -> "CrossEncoderRanker":
        """This ranker set up to score, not to train: `precision` as `serving_precision` resolves it.
        int8 replaces the encoder's Linear layers with dynamically quantized ones (CPU only); such a
        ranker can no longer be trained or saved, so training code loads the checkpoint itself."""
        chosen = serving_precision(precision, self.device)
        # A checkpoint that kept the retrieval order (no trained epoch beat it, see ranker.train) has
        # its text head zeroed: the encoder's reading is multiplied by 0, so serving need not run it.
        head = getattr(self.model, "classifier", None)
        if isinstance(head, torch.nn.Linear) and not any(bool(p.any()) for p in head.parameters()):
            self.reads_text = False
        if chosen == "int8" and self.device != "cpu":
            raise ConfigError(f"ranker precision int8 runs on the CPU only, not on {self.device}: set WHYREC_RANKER_PRECISION to auto, bf16 or fp32")
        self.use_bf16 = chosen == "bf16"
        if chosen == "int8" and not self.int8:
            with warnings.catch_warnings():
                # torch.ao's eager quantization is deprecated in favour of torchao, whose CPU int8
                # path needs torch.compile; the fbgemm kernels behind quantize_dynamic are what run fast here.
                warnings.simplefilter("ignore")
                self.model = torch.ao.quantization.quantize_dynamic(self.model, {torch.nn.Linear}, dtype=torch.qint8)
            self.int8 = True
        return self

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
        # Each part is read on its own so that the error names the file that is missing or corrupt.
        parts = (
            (meta_file, lambda: {key: json.loads(meta_file.read_text())[key] for key in ("history_window", "max_length", "feature_names", "feature_weights")}),
            (folder / "model.safetensors", lambda: AutoModelForSequenceClassification.from_pretrained(folder)),
            (folder / "tokenizer.json", lambda: AutoTokenizer.from_pretrained(folder)),
        )
        loaded = []
        for path, read in parts:
            try:
                loaded.append(read())
            except Exception as exc:  # noqa: BLE001 - safetensors, json and HF each raise their own types for a damaged file
                reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
                raise ConfigError(f"cannot read the ranker checkpoint file {path} ({type(exc).__name__}: {reason}); run `whyrec train --data DIR` to rebuild it") from None
        settings, model, tokenizer = loaded
        return cls(model, tokenizer, device, **settings)

    def save(self, folder: Path, metadata: dict) -> None:
        """Write the checkpoint beside `folder` and swap it in, so a crash never leaves half a checkpoint."""
        if self.int8:
            raise ValueError("an int8 ranker is for serving and cannot be saved: train and save one loaded with load_models(..., trainable=True)")
        with replaced_folder(folder) as staging:
            self.model.save_pretrained(staging)
            self.tokenizer.save_pretrained(staging)
            meta = {
                "history_window": self.history_window,
                "max_length": self.max_length,
                "feature_names": list(self.feature_names),
                "feature_weights": self.feature_weights.detach().cpu().tolist(),
                **metadata,
            }
            (staging / CHECKPOINT_META).write_text(json.dumps(meta, indent=2))

    def encode(self, queries: list[str], docs: list[str]):
        return self.tokenizer(queries, docs, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt").to(self.device)

    def forward(self, batch, features: np.ndarray) -> torch.Tensor:
        with torch.autocast(self.device if self.device == "cuda" else "cpu", dtype=torch.bfloat16, enabled=self.use_bf16):
            logits = self.model(**batch).logits.squeeze(-1).float()
        features = torch.as_tensor(np.asarray(features, dtype=np.float32).reshape(len(logits), -1), device=logits.device)
        return logits + features @ self.feature_weights

    @torch.no_grad()
    def score_pairs(self, queries: list[str], docs: list[str], features: np.ndarray) -> np.ndarray:
        self.model.eval()
        features = np.asarray(features, dtype=np.float32).reshape(len(queries), len(self.feature_names))
        if not self.reads_text:
            return features @ self.feature_weights.detach().cpu().numpy()
        # Batches of similar length waste little compute on padding; scores go back in input order.
        order = np.argsort([len(q) + len(d) for q, d in zip(queries, docs)], kind="stable")
        scores = np.zeros(len(queries), dtype=np.float32)
        for start in range(0, len(queries), self.batch_size):
            rows = order[start : start + self.batch_size]
            batch = self.encode([queries[i] for i in rows], [docs[i] for i in rows])
            scores[rows] = self.forward(batch, features[rows]).cpu().numpy()
        return scores

    def score(self, history: list[Item], candidates: list[Item], features: np.ndarray) -> np.ndarray:
        query = history_text(history[-self.history_window :])
        return self.score_pairs([query] * len(candidates), [candidate_text(c) for c in candidates], features)

    def rank(
        self,
        history: list[Item],
        candidates: list[Candidate],
        items: Mapping[str, Item],
        attribute: set[str] | int = 0,
        source: CandidateSource | None = None,
    ) -> list[RankedItem]:
        """Score and sort candidates. `attribute` is the number of top items (or the set of item ids)
        that get counterfactual attributions; `source` recomputes retrieval features for them (without
        it the features are held fixed and only the cross-encoder's reading is attributed)."""
        ranked = self.rank_many([history], [candidates], items)[0]
        wanted = {r.item_id for r in ranked[:attribute]} if isinstance(attribute, int) else set(attribute)
        return self.with_attributions(history, ranked, wanted, items, source) if wanted else ranked

    def rank_many(self, histories: list[list[Item]], candidate_lists: list[list[Candidate]], items: Mapping[str, Item]) -> list[list[RankedItem]]:
        """Score and sort the candidates of many shoppers in one batched pass (no attributions)."""
        queries, docs, features = [], [], []
        for history, candidates in zip(histories, candidate_lists):
            query = history_text(history[-self.history_window :])
            for c in candidates:
                queries.append(query)
                docs.append(candidate_text(items[c.item_id]))
                features.append(c.features)
        scores = self.score_pairs(queries, docs, np.array(features, dtype=np.float32).reshape(len(queries), len(self.feature_names)))
        result, start = [], 0
        for candidates in candidate_lists:
            mine = scores[start : start + len(candidates)]
            start += len(candidates)
            result.append([
                RankedItem(
                    item_id=candidates[i].item_id,
                    rank=rank,
                    retrieval_score=candidates[i].score,
                    ranker_score=float(mine[i]),
                    matched_history=candidates[i].matched_history,
                    candidates_scored=len(candidates),
                    features=candidates[i].features,
                )
                for rank, i in enumerate(np.argsort(-mine, kind="stable"), start=1)
            ])
        return result

    def with_attributions(
        self, history: list[Item], ranked: list[RankedItem], wanted: set[str], items: Mapping[str, Item], source: CandidateSource | None = None
    ) -> list[RankedItem]:
        """`ranked` with counterfactual attributions on the items in `wanted`; ranks without a
        history item are counted among all of `ranked`."""
        slate_scores = {r.item_id: r.ranker_score for r in ranked}
        targets = [(items[r.item_id], r.features) for r in ranked if r.item_id in wanted]
        attributions = self.attribute(history, targets, slate_scores, source)
        return [replace(r, attributions=attributions[r.item_id]) if r.item_id in attributions else r for r in ranked]

    def attribute(
        self,
        history: list[Item],
        targets: list[tuple[Item, tuple[float, ...]]],
        slate_scores: Mapping[str, float],
        source: CandidateSource | None = None,
    ) -> dict[str, tuple[Attribution, ...]]:
        """Leave-one-out over the recent history, for each (target, retrieval features), in one batch.
        `rank_without` places the lowered score among the other candidates' full-history scores."""
        older, recent = history[: -self.history_window], history[-self.history_window :]
        if not targets or len(recent) < 2:
            # With a single history item there is nothing to compare against: that item is the whole reason.
            return {t.item_id: tuple(Attribution(h.item_id, 1.0) for h in recent) for t, _ in targets}
        variants = [recent] + [recent[:i] + recent[i + 1 :] for i in range(len(recent))]
        queries, docs = [], []
        for target, _ in targets:
            queries += [history_text(v) for v in variants]
            docs += [candidate_text(target)] * len(variants)
        if source is None:
            features = np.repeat(np.array([f for _, f in targets], dtype=np.float32), len(variants), axis=0)
        else:
            # The shorter history changes what retrieval says too: recompute every variant's features.
            histories = [[h.item_id for h in older + v] for _ in targets for v in variants]
            features = source.features(histories, [t.item_id for t, _ in targets for _ in variants])
        scores = self.score_pairs(queries, docs, features).reshape(len(targets), len(recent) + 1)
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
