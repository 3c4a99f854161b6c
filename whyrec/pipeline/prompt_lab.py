"""The Prompt lab's work: run an edited template and the current one on the same fact tables,
measure both, and save the edited one as the next version in the prompts folder."""

from __future__ import annotations

import difflib
import os
import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

from whyrec.core.errors import ConfigError
from whyrec.core.schema import Explanation, ExplanationSource, FactTable
from whyrec.explainer import PromptTemplateSpec, available_templates, parse_template
from whyrec.pipeline.recommender import Recommender

_VERSION_LINE = re.compile(r"(?m)^version:[ \t]*\d+[ \t]*$")


@dataclass(frozen=True)
class LabMetrics:
    grounded_rate: float  # answers (all attempts) that passed the grounding check
    fallback_rate: float  # items that ended as the template sentence
    usr: float  # unique sentence ratio: distinct shown texts / items
    mean_words: float
    seconds_per_item: float


@dataclass(frozen=True)
class TemplateRun:
    label: str
    explanations: list[Explanation]
    seconds: float

    def metrics(self) -> LabMetrics:
        items = self.explanations
        attempts = [a for e in items for a in e.attempts]
        n = max(1, len(items))
        return LabMetrics(
            grounded_rate=sum(a.passed for a in attempts) / max(1, len(attempts)),
            fallback_rate=sum(e.source is ExplanationSource.TEMPLATE for e in items) / n,
            usr=len({e.text.strip().lower() for e in items}) / n,
            mean_words=sum(len(e.text.split()) for e in items) / n,
            seconds_per_item=self.seconds / n,
        )


@dataclass(frozen=True)
class LabComparison:
    tables: list[FactTable]
    titles: list[str]
    current: TemplateRun
    candidate: TemplateRun
    diff: str


def sample_tables(recommender: Recommender, shoppers: int, seed: int = 0) -> tuple[list[FactTable], list[str]]:
    """The fact table of the top item for a seeded sample of shoppers (the same sample each run)."""
    users = sorted(recommender.catalog.users)
    chosen = random.Random(seed).sample(users, min(shoppers, len(users)))
    tables = [recommender.rank(user, 1).tables[0] for user in chosen]
    return tables, [recommender.catalog.items[t.item_id].title for t in tables]


def compare(recommender: Recommender, candidate_text: str, tables: list[FactTable], titles: list[str]) -> LabComparison:
    """The current template and the edited one on the same tables and generator. A malformed
    edited template raises ConfigError naming what is wrong, before anything runs."""
    candidate = parse_template(candidate_text, source="the edited template")
    current = recommender.explainer.template
    return LabComparison(
        tables,
        titles,
        _run(recommender, current, tables),
        _run(recommender, candidate, tables),
        template_diff(Path(current.source).read_text(encoding="utf-8"), candidate_text, current.label),
    )


def template_diff(current_text: str, candidate_text: str, label: str) -> str:
    lines = difflib.unified_diff(current_text.splitlines(), candidate_text.splitlines(), f"{label} (current)", "edited", lineterm="")
    return "\n".join(lines) or "(no changes)"


def save_new_version(candidate_text: str, folder: Path, extra_dirs: list[Path] = ()) -> tuple[PromptTemplateSpec, Path]:
    """Write the edited template as `<name>.v<next>.yaml` in `folder` (never over an existing file)."""
    spec = parse_template(candidate_text, source="the edited template")
    versions = available_templates([*extra_dirs, folder]).get(spec.name, {})
    version = max(versions, default=0) + 1
    if not _VERSION_LINE.search(candidate_text):
        raise ConfigError("the edited template needs a top-level 'version: N' line (it is replaced by the next free version)")
    text = _VERSION_LINE.sub(f"version: {version}", candidate_text, count=1)
    spec = parse_template(text, source="the edited template")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{spec.name}.v{version}.yaml"
    staging = folder / f".{path.name}.tmp"
    staging.write_text(text, encoding="utf-8")
    try:
        os.link(staging, path)  # fails if the file appeared meanwhile: nothing is overwritten
    except FileExistsError:
        raise ConfigError(f"{path} already exists; reload the lab and save again") from None
    finally:
        staging.unlink()
    return spec, path


def _run(recommender: Recommender, template: PromptTemplateSpec, tables: list[FactTable]) -> TemplateRun:
    started = time.perf_counter()
    explanations = recommender.explainer_for(template).explain(tables)
    return TemplateRun(template.label, explanations, time.perf_counter() - started)
