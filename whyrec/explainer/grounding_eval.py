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

from whyrec.core.errors import ConfigError
from whyrec.core.schema import FactTable, fact_from_dict, fact_table_from_json
from whyrec.explainer.grounding import check_grounding

# The set lives with the tests (tests/data/); a dev install reads it from the checkout.
# Hand-labelled sentences, shipped with the package so an installed whyrec can measure its check.
DEFAULT_LABELS = Path(__file__).resolve().parent / "data" / "grounding_labels.json"


@dataclass(frozen=True)
class LabelledSentence:
    table: FactTable
    text: str
    supported: bool
    kind: str  # "paraphrase", "colour", "splice", ...: what the sentence does
    split: str = "dev"  # "dev": seen while writing the check's rules; "heldout": written after, never tuned on


def read_fact_table(path: Path) -> FactTable:
    """A fact table from a JSON file (`whyrec explainer check --facts`); errors name the file and field."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no fact table file at {path}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    return fact_table_from_json(data, str(path))


def read_texts(path: Path) -> list[tuple[str | None, str]]:
    """(id, text) pairs from a JSONL file of JSON strings or {"text", "id"} objects."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ConfigError(f"no texts file at {path}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 (byte {exc.start})") from None
    texts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
        if isinstance(row, str):
            texts.append((None, row))
        elif isinstance(row, dict) and isinstance(row.get("text"), str):
            texts.append((str(row["id"]) if row.get("id") is not None else None, row["text"]))
        else:
            raise ConfigError(f"{path}, line {number}: field 'text' is missing or not a string (expected a JSON string or {{\"text\": ...}})")
    if not texts:
        raise ConfigError(f"{path}: no texts")
    return texts


def load_labelled_sentences(path: Path = DEFAULT_LABELS) -> list[LabelledSentence]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no labelled grounding set at {path}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    tables = {}
    for i, t in enumerate(data.get("tables", [])):
        if not isinstance(t, dict) or not all(k in t for k in ("id", "user_id", "item_id")) or not isinstance(t.get("facts"), list):
            raise ConfigError(f"{path}: tables[{i}] needs id, user_id, item_id and a list of facts")
        facts = tuple(fact_from_dict(f, f"{path}: tables[{i}].facts[{j}]") for j, f in enumerate(t["facts"]))
        tables[t["id"]] = FactTable(str(t["user_id"]), str(t["item_id"]), facts)
    sentences = []
    for i, s in enumerate(data.get("sentences", [])):
        if not isinstance(s, dict) or s.get("table") not in tables or not isinstance(s.get("text"), str) or not isinstance(s.get("supported"), bool):
            raise ConfigError(f"{path}: sentences[{i}] needs a known table id, a text and a boolean 'supported'")
        sentences.append(LabelledSentence(tables[s["table"]], s["text"], s["supported"], str(s.get("kind", "")), str(s.get("split", "dev"))))
    return sentences


def evaluate_grounding_check(sentences: list[LabelledSentence]) -> dict:
    """Precision/recall of the check at rejecting unsupported sentences, over all sentences, per
    split and per class (`kind`), plus what it got wrong. `by_class` and `before_rules_by_class`
    give, for each unsupported class, the share the check rejects (recall) and, for each
    supported class, the share it accepts; `before_rules` is the half written blind to the rules."""
    report = _scores(sentences)
    report["by_split"] = {split: _scores([s for s in sentences if s.split == split]) for split in sorted({s.split for s in sentences})}
    for scores in report["by_split"].values():
        del scores["missed"], scores["wrongly_rejected"]
    report["by_class"] = _by_class(sentences)
    report["before_rules_by_class"] = _by_class([s for s in sentences if s.split == "before_rules"])
    return report


def _by_class(sentences: list[LabelledSentence]) -> dict:
    out = {}
    for kind in sorted({s.kind for s in sentences}):
        members = [s for s in sentences if s.kind == kind]
        supported = members[0].supported
        right = sum(check_grounding(s.text, s.table).passed == s.supported for s in members)
        out[kind] = {"sentences": len(members), "supported": supported, ("accepted" if supported else "rejected"): right / len(members)}
    return out


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
