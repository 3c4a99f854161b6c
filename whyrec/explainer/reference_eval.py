"""Comparing explanations with reference explanations on cases independent of any catalog.

A case file is JSONL, one case a line: {"id", "history": [text of an item or a summary of the
shopper's taste, ...], "item": {"title", "attributes": {name: value}}, "reference": "..."}. A history
entry may also be {"text", "kind": "item" | "taste"}; a plain string that reads as a summary of the
shopper ("Likes fountain pens", "Based on the user's reviews, ...") is a taste fact, never an item
the shopper bought. The fact
table is built from the row alone (no ranker), so explanations from other systems and data sets can
be scored on the same cases: BLEU-4 (corpus, with add-one smoothing of higher orders), ROUGE-L (LCS
F-measure, mean over cases) and BERTScore F1 computed with the MiniLM encoder available here
(greedy cosine matching of contextual token vectors, no idf weighting, no baseline rescaling).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from whyrec.core.catalog import EventKind
from whyrec.core.errors import ConfigError
from whyrec.core.schema import Fact, FactKind, FactTable

HISTORY_CHARS = 200
BERTSCORE_LAYER = 6  # the last of all-MiniLM-L6-v2's six layers


# How a summary of a shopper's taste starts or what it speaks of; an item title does neither.
_TASTE = re.compile(
    r"^\s*(likes?|loves?|enjoys?|prefers?|interested in|is into|into|fan of|a fan of|based on|this (user|shopper|customer)|the (user|shopper|customer))\b"
    r"|\b(the|this) (user|shopper|customer)\b|\buser'?s\b|\breviews?\b",
    re.IGNORECASE,
)


def is_taste_summary(text: str) -> bool:
    """The history entry describes the shopper's taste rather than naming an item."""
    return bool(_TASTE.search(text))


@dataclass(frozen=True)
class HistoryEntry:
    text: str
    taste: bool  # a summary of the shopper's taste, not an item


@dataclass(frozen=True)
class ReferenceCase:
    case_id: str
    history: tuple[HistoryEntry, ...]
    title: str
    attributes: tuple[tuple[str, str], ...]
    reference: str


def load_reference_cases(path: Path) -> list[ReferenceCase]:
    cases = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ConfigError(f"no reference file at {path}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise ConfigError(f"{where}: expected an object with id, history, item and reference")
        for field, kind in (("id", (str, int)), ("history", list), ("item", dict), ("reference", str)):
            if not isinstance(row.get(field), kind):
                raise ConfigError(f"{where}: field '{field}' is missing or not a {kind[0].__name__ if isinstance(kind, tuple) else kind.__name__}")
        item = row["item"]
        if not isinstance(item.get("title"), str) or not item["title"].strip():
            raise ConfigError(f"{where}: field 'item.title' must be a non-empty string")
        attributes = item.get("attributes") or {}
        if not isinstance(attributes, dict):
            raise ConfigError(f"{where}: field 'item.attributes' must be an object of name: value")
        if not row["history"]:
            raise ConfigError(f"{where}: field 'history' must be a non-empty list of texts")
        history = tuple(_history_entry(h, f"{where}: field 'history[{i}]'") for i, h in enumerate(row["history"]))
        cases.append(ReferenceCase(str(row["id"]), history, item["title"], tuple((str(k), str(v)) for k, v in attributes.items()), row["reference"]))
    if not cases:
        raise ConfigError(f"{path}: no cases")
    return cases


def _history_entry(value, where: str) -> HistoryEntry:
    if isinstance(value, str) and value.strip():
        return HistoryEntry(value, is_taste_summary(value))
    if isinstance(value, dict) and isinstance(value.get("text"), str) and value["text"].strip() and value.get("kind", "item") in ("item", "taste"):
        return HistoryEntry(value["text"], value.get("kind", "item") == "taste")
    raise ConfigError(f"{where} must be a non-empty text or {{\"text\", \"kind\": \"item\" | \"taste\"}}")


def reference_fact_table(case: ReferenceCase) -> FactTable:
    """Item facts about the case's item; a history fact (a purchase) per history item and a taste
    fact per summary of the shopper's taste."""
    facts: list[Fact] = []

    def add(kind: FactKind, text: str, value: str, **subjects) -> None:
        facts.append(Fact(f"F{len(facts) + 1}", kind, text, value, **subjects))

    add(FactKind.ITEM_TITLE, f'The recommended item is "{case.title}".', case.title, item_id=case.case_id, attribute="title")
    for name, value in case.attributes:
        add(FactKind.ITEM_ATTRIBUTE, f"Its {name.replace('_', ' ')} is {value}.", f"{name} {value}", item_id=case.case_id, attribute=name)
    for n, entry in enumerate(case.history, 1):
        text = " ".join(entry.text.split())[:HISTORY_CHARS]
        if entry.taste:
            add(FactKind.TASTE, f'A summary of your taste: "{text}".', text)
        else:
            add(FactKind.HISTORY_ITEM, f'You bought "{text}".', text, history_item_id=f"case-{case.case_id}-h{n}", event=EventKind.PURCHASE, position=len(case.history) - n + 1)
    return FactTable(f"case-{case.case_id}", case.case_id, tuple(facts))


def _tokens(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def bleu4(candidates: list[str], references: list[str]) -> float:
    """Corpus BLEU-4 with one reference per case; orders 2-4 add-one smoothed (Lin & Och 2004)."""
    matched, total = [0] * 4, [0] * 4
    cand_len = ref_len = 0
    for cand, ref in zip(candidates, references):
        c, r = _tokens(cand), _tokens(ref)
        cand_len, ref_len = cand_len + len(c), ref_len + len(r)
        for n in range(1, 5):
            c_grams = Counter(tuple(c[i : i + n]) for i in range(len(c) - n + 1))
            r_grams = Counter(tuple(r[i : i + n]) for i in range(len(r) - n + 1))
            matched[n - 1] += sum(min(k, r_grams[g]) for g, k in c_grams.items())
            total[n - 1] += max(0, len(c) - n + 1)
    if cand_len == 0 or matched[0] == 0:
        return 0.0
    logs = [math.log(matched[0] / total[0])] + [math.log((matched[n] + 1) / (total[n] + 1)) for n in range(1, 4)]
    brevity = 1.0 if cand_len > ref_len else math.exp(1 - ref_len / cand_len)
    return brevity * math.exp(sum(logs) / 4)


def rouge_l(candidates: list[str], references: list[str]) -> float:
    """Mean ROUGE-L F1 (longest common subsequence of tokens)."""
    scores = []
    for cand, ref in zip(candidates, references):
        c, r = _tokens(cand), _tokens(ref)
        if not c or not r:
            scores.append(0.0)
            continue
        previous = [0] * (len(r) + 1)
        for x in c:
            current = [0]
            for j, y in enumerate(r, 1):
                current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[-1]))
            previous = current
        lcs = previous[-1]
        precision, recall = lcs / len(c), lcs / len(r)
        scores.append(0.0 if lcs == 0 else 2 * precision * recall / (precision + recall))
    return sum(scores) / len(scores) if scores else 0.0


def bertscore_f1(candidates: list[str], references: list[str], encoder_path: str, layer: int = BERTSCORE_LAYER) -> float:
    """Mean BERTScore F1 with the given BERT encoder's `layer` hidden states."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(encoder_path)
    model = AutoModel.from_pretrained(encoder_path).eval()

    def vectors(texts: list[str]) -> list[torch.Tensor]:
        batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=256)
        with torch.no_grad():
            hidden = model(**batch, output_hidden_states=True).hidden_states[layer]
        out = []
        for i in range(len(texts)):
            keep = batch["attention_mask"][i].bool() & ~torch.isin(batch["input_ids"][i], torch.tensor(tokenizer.all_special_ids))
            out.append(torch.nn.functional.normalize(hidden[i][keep], dim=-1))
        return out

    scores = []
    for start in range(0, len(candidates), 32):
        cands, refs = vectors(candidates[start : start + 32]), vectors(references[start : start + 32])
        for c, r in zip(cands, refs):
            if len(c) == 0 or len(r) == 0:
                scores.append(0.0)
                continue
            sim = c @ r.T
            precision, recall = sim.max(dim=1).values.mean().item(), sim.max(dim=0).values.mean().item()
            scores.append(2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0)
    return sum(scores) / len(scores) if scores else 0.0
