"""Measures the grounding check itself on hand-labelled sentences.

The check is scored as a detector of unsupported sentences: a *positive* is a sentence the check
rejects. precision = rejected and really unsupported / all rejected (how often a rejection is
right); recall = rejected and really unsupported / all really unsupported (how many inventions it
catches). A lenient check shows as low recall; an over-strict one as low precision (and a high
false-rejection rate of supported sentences, which costs template sentences, never false claims).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from whyrec.errors import ConfigError
from whyrec.explainer.grounding import check_grounding
from whyrec.schema import Fact, FactKind, FactTable

# The set lives with the tests (tests/data/); a dev install reads it from the checkout.
DEFAULT_LABELS = Path(__file__).resolve().parent.parent / "tests" / "data" / "grounding_labels.json"


@dataclass(frozen=True)
class LabelledSentence:
    table: FactTable
    text: str
    supported: bool
    kind: str  # "paraphrase", "colour", "splice", ...: what the sentence does
    split: str = "dev"  # "dev": seen while writing the check's rules; "heldout": written after, never tuned on


def load_labelled_sentences(path: Path = DEFAULT_LABELS) -> list[LabelledSentence]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no labelled grounding set at {path}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    tables = {}
    for i, t in enumerate(data.get("tables", [])):
        try:
            facts = tuple(Fact(f["id"], FactKind(f["kind"]), f["text"], f.get("value", ""), bool(f.get("about_history"))) for f in t["facts"])
            tables[t["id"]] = FactTable(str(t["user_id"]), str(t["item_id"]), facts)
        except (KeyError, ValueError, TypeError) as exc:
            raise ConfigError(f"{path}: tables[{i}] is malformed ({exc!r}); expected id, user_id, item_id and facts with id, kind, text") from None
    sentences = []
    for i, s in enumerate(data.get("sentences", [])):
        if not isinstance(s, dict) or s.get("table") not in tables or not isinstance(s.get("text"), str) or not isinstance(s.get("supported"), bool):
            raise ConfigError(f"{path}: sentences[{i}] needs a known table id, a text and a boolean 'supported'")
        sentences.append(LabelledSentence(tables[s["table"]], s["text"], s["supported"], str(s.get("kind", "")), str(s.get("split", "dev"))))
    return sentences


def evaluate_grounding_check(sentences: list[LabelledSentence]) -> dict:
    """Precision/recall of the check at rejecting unsupported sentences, over all sentences and per
    split, plus what it got wrong."""
    report = _scores(sentences)
    report["by_split"] = {split: _scores([s for s in sentences if s.split == split]) for split in sorted({s.split for s in sentences})}
    for scores in report["by_split"].values():
        del scores["missed"], scores["wrongly_rejected"]
    return report


def _scores(sentences: list[LabelledSentence]) -> dict:
    tp = fp = fn = tn = 0
    missed, wrongly_rejected = [], []
    for s in sentences:
        verdict = check_grounding(s.text, s.table)
        rejected = not verdict.passed
        if rejected and not s.supported:
            tp += 1
        elif rejected:
            fp += 1
            wrongly_rejected.append({"text": s.text, "kind": s.kind, "reason": verdict.reason})
        elif not s.supported:
            fn += 1
            missed.append({"text": s.text, "kind": s.kind})
        else:
            tn += 1
    return {
        "sentences": len(sentences),
        "unsupported": tp + fn,
        "supported": fp + tn,
        "precision": tp / (tp + fp) if tp + fp else 1.0,
        "recall": tp / (tp + fn) if tp + fn else 1.0,
        "false_rejection_rate": fp / (fp + tn) if fp + tn else 0.0,
        "missed": missed,
        "wrongly_rejected": wrongly_rejected,
        "definition": "positive = the check rejects the sentence; precision = rejected unsupported / rejected; recall = rejected unsupported / unsupported",
    }
