"""Offline measurements and the explainer's own tuning: `whyrec eval ...` and `whyrec explainer ...`."""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from whyrec.cli.app import DataOption, JsonOption, LlmUrlOption, _settings, eval_app, explainer_app
from whyrec.core.config import Settings
from whyrec.core.errors import WhyrecError


@eval_app.command("ranker")
def eval_ranker(
    data: Optional[Path] = DataOption,
    users: Optional[int] = typer.Option(None, min=1, help="Evaluate a fixed random sample (seeded) of this many shoppers; default all."),
    seed: int = typer.Option(0, help="Seed of the shopper sample."),
    skip_sasrec: bool = typer.Option(False, "--skip-sasrec", help="Leave out the RecBole SASRec baseline (it trains for several minutes)."),
    sasrec_epochs: Optional[int] = typer.Option(None, min=1, help="Fixed SASRec epochs instead of early stopping (for quick runs)."),
    sasrec_threads: Optional[int] = typer.Option(
        None, min=1, help="CPU threads for SASRec, which trains while whyrec's methods are scored; whyrec keeps the rest. Default: half the cores."
    ),
    retrain_sasrec: bool = typer.Option(False, "--retrain-sasrec", help="Train SASRec again instead of reusing its cached result for these inputs (the new result replaces it)."),
    diversity: float = typer.Option(0.0, min=0.0, max=1.0, help="MMR weight for the whyrec slate (0 = the ranker's order)."),
    as_json: bool = JsonOption,
):
    """Leave-one-out, full-catalog ranking: whyrec vs popularity, embedding, co-occurrence and RecBole SASRec.

    SASRec runs in its own virtualenv (scripts/setup-recbole.sh); its result is cached by its inputs
    and reused by the next run (`whyrec eval sasrec` trains it ahead). The ranker and sequence model
    are trained first if the cache has none for this data."""
    import torch

    from whyrec.core.split import leave_one_out
    from whyrec.offline.evaluation import evaluate
    from whyrec.offline.sasrec_baseline import find_recbole_python, start_sasrec
    from whyrec.pipeline import build_retriever, load_data, load_models

    settings = _settings(data)
    catalog = load_data(settings)
    sasrec = None
    cores = torch.get_num_threads()
    if not skip_sasrec:
        python = find_recbole_python(settings.recbole_python)
        # Each gains only ~1.4-1.5x from a second core, so side by side on split cores ends sooner than one after the other.
        threads = min(sasrec_threads or max(1, cores // 2), cores)
        torch.set_num_threads(max(1, cores - threads))
        sasrec = lambda user_ids: start_sasrec(  # noqa: E731
            catalog, user_ids, python, seed=seed, epochs=sasrec_epochs, threads=threads, cache_dir=settings.cache_dir, reuse=not retrain_sasrec
        )
    served, ranker = load_models(settings, catalog)
    # Co-occurrence counts for the evaluation come from the histories only, never a test target.
    retriever = build_retriever(settings, catalog, served.embedding, sequences=[c.history for c in leave_one_out(catalog).test])
    report = evaluate(
        catalog, retriever, ranker, rerank=settings.candidates, users=users, seed=seed, diversity=diversity, sasrec=sasrec, threads_alone=cores
    )
    if as_json:
        print(json.dumps(report, indent=2))
        return
    print(report["protocol"])
    print(f"{'method':<16}{'NDCG@10':>9}{'R@10':>8}{'R@50':>8}{'MRR':>8}")
    for name, m in report["methods"].items():
        print(f"{name:<16}{m['ndcg@10']:>9.4f}{m['recall@10']:>8.4f}{m['recall@50']:>8.4f}{m['mrr']:>8.4f}")
    print(f"candidates: {report['candidates']}; diversity: {report['diversity']}")


@eval_app.command("sasrec")
def eval_sasrec(
    data: Optional[Path] = DataOption,
    users: Optional[int] = typer.Option(None, min=1, help="The same shopper sample as `eval ranker --users N`; default all."),
    seed: int = typer.Option(0, help="Seed of the shopper sample and of SASRec's training."),
    sasrec_epochs: Optional[int] = typer.Option(None, min=1, help="Fixed SASRec epochs instead of early stopping (for quick runs)."),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads for SASRec. Default: torch's choice."),
    as_json: bool = JsonOption,
):
    """Train the RecBole SASRec baseline alone and cache its result, for `eval ranker` with the same
    data, --users, --seed and --sasrec-epochs to reuse.

    SASRec trains for hours on a 2-core machine; this starts it ahead, e.g. while `whyrec train` runs.
    A result already cached for these inputs is printed without training again."""
    from whyrec.core.split import leave_one_out
    from whyrec.offline.evaluation import evaluated_cases
    from whyrec.offline.sasrec_baseline import find_recbole_python, start_sasrec
    from whyrec.pipeline import load_data

    settings = _settings(data)
    catalog = load_data(settings)
    python = find_recbole_python(settings.recbole_python)
    user_ids = [c.user_id for c in evaluated_cases(leave_one_out(catalog).test, users, seed)]
    result = start_sasrec(catalog, user_ids, python, seed=seed, epochs=sasrec_epochs, threads=threads, cache_dir=settings.cache_dir).result()
    if as_json:
        print(json.dumps(result, indent=2))
        return
    print(f"SASRec on {result['users']} shoppers of {catalog.name}: NDCG@10 {result['ndcg@10']:.4f}, Recall@10 {result['recall@10']:.4f}, "
          f"Recall@50 {result['recall@50']:.4f}, MRR {result['mrr']:.4f} (cached for `whyrec eval ranker`)")


@eval_app.command("explanations")
def eval_explanations(
    data: Optional[Path] = DataOption,
    users: int = typer.Option(200, min=1, help="Held-out shoppers (never used by `whyrec explainer tune`), a seeded sample."),
    all_shoppers: bool = typer.Option(False, "--all-shoppers", help="Every shopper of the data instead of a sample of held-out ones (for a shop the adapter was not tuned on)."),
    k: int = typer.Option(1, "-k", "--k", min=1, max=20, help="Explanations per shopper (the top k of their slate)."),
    batch_users: int = typer.Option(8, "--batch-users", min=1, help="Shoppers whose slates go to the generator as one batch; latency is reported per explanation."),
    seed: int = typer.Option(0, help="Seed of the shopper sample."),
    backend: str = typer.Option("local", help="local: in-process transformers; openai: the OpenAI-compatible server at --llm-url; none: no generator, every reason is the checked template sentence (what a page the model has not reached shows)."),
    llm_url: Optional[str] = LlmUrlOption,
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="LoRA adapter folder; default: the one `whyrec explainer tune` saved, if any."),
    no_adapter: bool = typer.Option(False, "--no-adapter", help="Measure the base generator even if a tuned adapter exists."),
    references: Optional[Path] = typer.Option(None, "--references", help="JSONL of reference cases {id, history, item: {title, attributes}, reference}: adds BLEU-4, ROUGE-L, BERTScore."),
    grounding_labels: Optional[Path] = typer.Option(None, "--grounding-labels", help="Hand-labelled sentences for the grounding check's precision/recall. Default: the labelled set shipped in the package (whyrec/explainer/data/grounding_labels.json)."),
    as_json: bool = JsonOption,
):
    """Explanation quality on held-out shoppers: raw and shown grounded rate, fallbacks, unsupported
    claims, unique-sentence ratio, length, history citations, speed; and the grounding check's own
    precision/recall on the hand-labelled sentences."""
    from whyrec.core.errors import ConfigError

    if backend not in ("local", "openai", "none"):
        raise ConfigError(f"--backend must be 'local', 'openai' or 'none', not '{backend}'")
    from tqdm import tqdm

    from whyrec.explainer import DEFAULT_LABELS, evaluate_grounding_check, explanation_metrics, is_held_out, load_labelled_sentences, prompt_facts, table_evidence
    from whyrec.pipeline import Recommender
    settings = _settings(data, llm_url if backend == "openai" else None)
    if backend == "openai" and not settings.llm_url:
        raise ConfigError("--backend openai needs --llm-url (or WHYREC_LLM_URL)")
    if backend == "local":
        settings = settings.model_copy(update={"llm_url": None})
    if adapter is not None or no_adapter:
        settings = settings.model_copy(update={"adapter": None if no_adapter else adapter})
    settings = settings.model_copy(update={"explanation_cache_size": 0})  # measure generation, not the cache

    report: dict = {"grounding_check": evaluate_grounding_check(load_labelled_sentences(grounding_labels or DEFAULT_LABELS))}
    for key in ("missed", "wrongly_rejected"):
        report["grounding_check"][key] = report["grounding_check"][key][:10]
    recommender = Recommender.load(settings)
    explainer = recommender.explainer
    held_out = [u for u in recommender.catalog.users if is_held_out(u)]
    sample = list(recommender.catalog.users) if all_shoppers else random.Random(seed).sample(held_out, min(users, len(held_out)))
    tables = [t for user in tqdm(sample, desc="ranking held-out shoppers") for t in recommender.rank(user, k).tables]
    # Slates of `batch_users` shoppers go to the generator together, as a busy service would send them.
    explanations, seconds, step = [], 0.0, batch_users * k
    for start in tqdm(range(0, len(tables), step), desc="explaining"):
        began = time.time()
        batch = tables[start : start + step]
        explanations += explainer.explain(batch) if backend != "none" else [_template_only(t, explainer.template.label) for t in batch]
        seconds += time.time() - began
    report["explanations"] = {
        "data": recommender.catalog.name,
        "shoppers": len(sample),
        "per_shopper": k,
        "batch": batch_users * k,
        "backend": backend,
        "model": explainer.model_name if backend != "none" else None,
        "template": explainer.template.label,
        # Variety is counted over what the generator was shown: equal prompts, equal sentences.
        **explanation_metrics(tables, explanations, seconds, [table_evidence(t, prompt_facts(explainer.template, t)) for t in tables]),
        "samples": [{"shown": e.text, "source": e.source.value, "first_answer": e.attempts[0].text if e.attempts else "", "reason": e.attempts[0].reason if e.attempts else ""} for e in explanations[:8]],
        # What the prompt engineer reads first: the first answers the check turned down, and why.
        "rejected_first_answers": [{"first_answer": e.attempts[0].text, "reason": e.attempts[0].reason} for e in explanations if e.attempts and not e.attempts[0].passed][:60],
    }
    # The keys later checks read sit at the top level.
    report.update({key: report["explanations"][key] for key in (
        "raw_grounded_rate", "shown_grounded_rate", "fallback_rate", "unsupported_claim_rate", "usr",
        "mean_words", "history_citation_rate", "seconds_per_explanation", "explanations_per_second",
        "claims_per_text", "shown_unsupported_claims", "template_share", "bare_reason_rate")})
    if references is not None:
        report["reference"] = _reference_scores(references, explainer, settings)
    if as_json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return
    check = report["grounding_check"]
    print(f"grounding check on {check['sentences']} labelled sentences: precision {check['precision']:.3f}, recall {check['recall']:.3f}")
    before = check["by_split"].get("before_rules")
    if before:
        print(f"  on the {before['sentences']} written before the claim rules: precision {before['precision']:.3f}, recall {before['recall']:.3f}")
    for key in ("raw_grounded_rate", "shown_grounded_rate", "fallback_rate", "unsupported_claim_rate", "usr", "mean_words", "history_citation_rate",
                "claims_per_text", "shown_unsupported_claims", "template_share", "bare_reason_rate", "seconds_per_explanation", "explanations_per_second"):
        print(f"{key:<26}{report[key]:.4f}")
    if "reference" in report:
        print("reference: " + ", ".join(f"{k} {v:.4f}" for k, v in report["reference"].items() if isinstance(v, float)))


def _template_only(table, template_label: str):
    from whyrec.core.schema import Explanation, ExplanationSource
    from whyrec.explainer import checked_template

    text, facts = checked_template(table)
    return Explanation(text, ExplanationSource.TEMPLATE, False, facts, template_label, "")


def _reference_scores(path: Path, explainer, settings: Settings) -> dict:
    from whyrec.explainer import BERTSCORE_LAYER, bertscore_f1, bleu4, load_reference_cases, reference_fact_table, rouge_l
    from whyrec.pipeline import encoder_path

    cases = load_reference_cases(path)
    explanations = explainer.explain([reference_fact_table(c) for c in cases])
    texts, refs = [e.text for e in explanations], [c.reference for c in cases]
    encoder = encoder_path(settings)
    return {
        "cases": len(cases),
        "bleu4": bleu4(texts, refs),
        "rougeL": rouge_l(texts, refs),
        "bertscore_f1": bertscore_f1(texts, refs, encoder),
        "bertscore_model": f"{Path(encoder).name} (sentence-transformers/all-MiniLM-L6-v2), layer {BERTSCORE_LAYER}, no idf, no rescaling",
    }


@explainer_app.command("tune")
def explainer_tune(
    data: Optional[list[Path]] = typer.Option(None, "--data", help="Data folder to take training shoppers from; repeat it to tune on several shops (the shipped adapter: see scripts/tune-adapter.sh). Default: $WHYREC_DATA, else the bundled sample store."),
    examples: int = typer.Option(200, min=8, help="Grounded (facts -> explanation) training examples in all, split evenly over the shops; one per training shopper."),
    epochs: int = typer.Option(1, min=1, help="Passes over the examples."),
    rank: int = typer.Option(8, min=1, help="LoRA rank (8 keeps the fp16 adapter of the default generator under 5 MB)."),
    learning_rate: float = typer.Option(1e-3, help="AdamW learning rate (linear decay)."),
    eval_users: int = typer.Option(40, min=0, help="Held-out shoppers of the first shop to measure the raw grounded rate and USR on, before and after (0 = skip)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Adapter folder. Default: <cache>/adapters/<generator>/lora-<template>, which the explainer then loads by itself."),
    resume: bool = typer.Option(False, "--resume", help="Continue training the adapter already at --out (use another --seed for new examples)."),
    seed: int = typer.Option(0, help="Seed of the training shoppers' sample and of training."),
    as_json: bool = JsonOption,
):
    """Fine-tune the generator with LoRA on grounded explanations made from training shoppers' data.

    Held-out shoppers (one in five, by a hash of the id) are never trained on; the raw grounded rate
    and unique-sentence ratio of the model's first answers are measured on them before and after.
    The adapter's whyrec_adapter.json records the shops (name, data fingerprint, examples each)."""
    from whyrec.core.catalog import fingerprint
    from whyrec.core.errors import ConfigError
    from whyrec.explainer import TuneConfig, first_answer_metrics, train_lora, tuning_examples
    from whyrec.pipeline import build_explainer, default_adapter_folder, generator_path, load_data

    shops = [_settings(d) for d in (data or [None])]
    settings = shops[0]
    catalogs = [load_data(s) for s in shops]
    base = build_explainer(settings.model_copy(update={"adapter": None, "explanation_cache_size": 0}))
    target = out or default_adapter_folder(settings, base.template)
    if resume and not (target / "adapter_config.json").exists():
        raise ConfigError(f"--resume: no adapter at {target} to continue")
    train_set, sources = [], []
    for i, catalog in enumerate(catalogs):
        share = examples // len(catalogs) + (1 if i < examples % len(catalogs) else 0)
        taken = tuning_examples(catalog, share, seed=seed, template=base.template)
        train_set += taken
        sources.append({"data": catalog.name, "data_fingerprint": fingerprint(catalog), "examples": len(taken)})
    random.Random(seed).shuffle(train_set)
    held_out = [e.table for e in tuning_examples(catalogs[0], eval_users, seed=1, held_out=True, template=base.template)] if eval_users else []
    print(f"{len(train_set)} training examples from training shoppers of {', '.join(c.name for c in catalogs)}; {len(held_out)} held-out shoppers to measure on", file=sys.stderr)
    before = first_answer_metrics(base, held_out) if held_out else None
    config = TuneConfig(examples=examples, epochs=epochs, rank=rank, alpha=2 * rank, learning_rate=learning_rate, seed=seed)
    training = train_lora(generator_path(settings), base.template, train_set, base.variables, target, config, resume=target if resume else None, sources=sources)
    report = {"adapter": str(target), "training": training, "before": before}
    if held_out:
        tuned = build_explainer(settings.model_copy(update={"adapter": target, "explanation_cache_size": 0}))
        report["after"] = first_answer_metrics(tuned, held_out)
    if as_json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return
    print(f"adapter saved to {target} ({training['examples']} examples, {training['seconds']:.0f}s, loss {training['first_loss']} -> {training['last_loss']})")
    if held_out:
        for label in ("before", "after"):
            m = report[label]
            print(f"{label:>6}: raw grounded rate {m['raw_grounded_rate']:.3f}, raw USR {m['raw_usr']:.3f}, {m['seconds_per_explanation']:.2f}s per explanation")


@explainer_app.command("check")
def explainer_check(
    facts: Path = typer.Option(..., "--facts", help="A fact table as `explanation.fact_table` in `recommend --json` / `explain --json` / the API prints it (a JSON list of facts, or an object holding one)."),
    text: Optional[str] = typer.Option(None, "--text", help="One sentence to check."),
    texts: Optional[Path] = typer.Option(None, "--texts", help="JSONL: one sentence a line, as a JSON string or {\"text\": ...} (optionally with an \"id\")."),
    as_json: bool = JsonOption,
):
    """Check sentences against a fact table the way a shown reason is checked: the claims each one
    makes (which history item, which relation, which value, verb and number) and the fact each
    claim matches, or why none does; a sentence naming only the history while the table holds a
    reason fails too. Exit 0 when all pass, 1 when any fails, 2 on bad input."""
    from whyrec.explainer import check_reason, read_fact_table, read_texts

    try:
        if (text is None) == (texts is None):
            raise WhyrecError("give exactly one of --text TEXT or --texts FILE.jsonl")
        table = read_fact_table(facts)
        items = [(None, text)] if text is not None else read_texts(texts)
    except WhyrecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    results = []
    for text_id, sentence in items:
        report = check_reason(sentence, table).to_dict(table)
        results.append({**({"id": text_id} if text_id is not None else {}), "text": sentence, **report})
    if as_json:
        print(json.dumps(results if texts is not None else results[0], indent=2, ensure_ascii=False))
    else:
        for r in results:
            print(f"{'PASS' if r['passed'] else 'FAIL'}  {r['text']}")
            if not r["passed"]:
                print(f"      reason: {r['reason']}")
            for c in r["claims"]:
                found = f"{c['fact_id']}: {c['fact_text']}" if c["matched"] else f"no fact: {c['problem']}"
                print(f"      - {c['kind']} \"{c['words']}\" -> {found}")
    raise typer.Exit(0 if all(r["passed"] for r in results) else 1)


