"""Explanation quality numbers: how often the model's own text is grounded, how often a template
had to stand in, how varied and how long the texts are, and how fast they came."""

from __future__ import annotations

import re
from typing import Hashable

from whyrec.core.schema import Explanation, ExplanationSource, Fact, FactTable
from whyrec.explainer.grounding import NO_REASON, check_grounding, is_bare, missing_reason
from whyrec.explainer.reasons import template_sentence

_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_NOT_ABOUT_CONTENT = ("does not name anything", "empty text", NO_REASON)


def unique_sentence_ratio(texts: list[str]) -> float:
    """Distinct sentences / all sentences over the texts (USR): 1.0 when no two sentences repeat."""
    sentences = [" ".join(s.lower().split()) for t in texts for s in _SENTENCE.split(t.strip()) if s.strip()]
    return len(set(sentences)) / len(sentences) if sentences else 0.0


def _one_per_evidence(evidence: list[Hashable], texts: list[str | None]) -> list[str]:
    """The texts of distinct evidence only: two shoppers with the same evidence for the same item
    are meant to get the same sentence, which says nothing about how varied the writing is."""
    seen: dict[Hashable, str] = {}
    for key, text in zip(evidence, texts):
        if text is not None:
            seen.setdefault(key, text)
    return list(seen.values())


def table_evidence(table: FactTable, shown: tuple[Fact, ...] | None = None) -> Hashable:
    """What an explanation of the table can rest on: the item and the facts (those the prompt shows,
    given), without their ids or the shopper."""
    return (table.item_id, tuple((f.kind, f.text, f.value) for f in (table.facts if shown is None else shown)))


def explanation_metrics(tables: list[FactTable], explanations: list[Explanation], seconds: float, evidence: list[Hashable] | None = None) -> dict:
    """The keys `whyrec eval explanations` prints (later checks read them):

    raw_grounded_rate: first model answers that pass the check; shown_grounded_rate: shown texts that
    pass the check (model or template); fallback_rate: shown texts that are the template sentence;
    unsupported_claim_rate: first answers rejected for stating something the facts do not support
    (not merely for failing to name the history); usr / raw_usr: unique-sentence ratio of the shown
    texts / of the first answers, one text per distinct `evidence` (default: the item and its fact
    table, `table_evidence`; `distinct_evidence` counts them): shoppers with the same evidence get
    one text by design; usr_all_texts: over every text; mean_words: of the shown texts; history_citation_rate: shown texts
    that name a history item (or "popular" where that is the fact)."""
    n = len(explanations)
    if n == 0:
        return {"explanations": 0}
    evidence = evidence if evidence is not None else [table_evidence(t) for t in tables]
    first = [e.attempts[0] if e.attempts else None for e in explanations]
    shown_verdicts = [check_grounding(e.text, t) for t, e in zip(tables, explanations)]
    shown_claims = [c for v in shown_verdicts for c in v.claims]
    unsupported = sum(1 for a in first if a is not None and not a.passed and not a.reason.startswith(_NOT_ABOUT_CONTENT))
    return {
        "explanations": n,
        "raw_grounded_rate": sum(1 for a in first if a is not None and a.passed) / n,
        "retry_grounded_rate": sum(1 for e in explanations if e.source is ExplanationSource.LLM) / n,
        "shown_grounded_rate": sum(v.passed for v in shown_verdicts) / n,
        "fallback_rate": sum(1 for e in explanations if e.source is ExplanationSource.TEMPLATE) / n,
        "unsupported_claim_rate": unsupported / n,
        "usr": unique_sentence_ratio(_one_per_evidence(evidence, [e.text for e in explanations])),
        "raw_usr": unique_sentence_ratio(_one_per_evidence(evidence, [a.text if a is not None else None for a in first])),
        "usr_all_texts": unique_sentence_ratio([e.text for e in explanations]),
        "distinct_evidence": len(set(evidence)),
        "mean_words": sum(len(e.text.split()) for e in explanations) / n,
        "history_citation_rate": sum(v.cites_history for v in shown_verdicts) / n,
        "claims_per_text": len(shown_claims) / n,
        # Claims in shown texts that no single fact with the same subjects states: must be 0.
        "shown_unsupported_claims": sum(not c.matched for c in shown_claims),
        "shown_failing_texts": sum(not v.passed for v in shown_verdicts),
        "template_share": sum(1 for e in explanations if e.source is ExplanationSource.TEMPLATE) / n,
        # Shown reasons that name history items and nothing they share with the item or that other shoppers did.
        "bare_reason_rate": sum(is_bare(e.text, t, v) for t, e, v in zip(tables, explanations, shown_verdicts)) / n,
        # ... of which the table held a reason to give instead (the explainer never shows these).
        "bare_with_reason_available": sum(missing_reason(e.text, t, v) is not None for t, e, v in zip(tables, explanations, shown_verdicts)),
        "bare_with_reason_examples": [
            {"shown": e.text, "missing": m, "template_tried": template_sentence(t)[0], "why_not": check_grounding(template_sentence(t)[0], t).reason}
            for t, e, v in zip(tables, explanations, shown_verdicts) if (m := missing_reason(e.text, t, v)) is not None
        ][:5],
        "third_person_or_cut_off": sum(v.reason.startswith(("is cut off", "speaks of the shopper")) for v in shown_verdicts),
        "seconds_per_explanation": seconds / n,
        "explanations_per_second": n / seconds if seconds > 0 else None,
    }


def first_answer_metrics(explainer, tables: list[FactTable]) -> dict:
    """One batch of first answers, no retry and no cache: the model's own grounded rate and variety."""
    import time

    started = time.time()
    raws = explainer.chain.batch([explainer.variables(t) for t in tables], config={"max_concurrency": explainer.concurrency})
    seconds = time.time() - started
    attempts = [explainer.judge(raw, t)[1] for raw, t in zip(raws, tables)]
    n = len(attempts)
    return {
        "explanations": n,
        "raw_grounded_rate": sum(a.passed for a in attempts) / n if n else 0.0,
        "raw_usr": unique_sentence_ratio([a.text for a in attempts]),
        "unsupported_claim_rate": sum(1 for a in attempts if not a.passed and not a.reason.startswith(_NOT_ABOUT_CONTENT)) / n if n else 0.0,
        "seconds_per_explanation": seconds / n if n else 0.0,
        "examples": [{"text": a.text, "passed": a.passed, "reason": a.reason} for a in attempts[:5]],
    }
