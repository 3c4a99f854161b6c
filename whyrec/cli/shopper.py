"""Commands that answer for shoppers: recommend, explain, and filling the explanation store ahead of visits."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from whyrec.cli.app import DataOption, JsonOption, LlmUrlOption, _settings, app
from whyrec.core.protocol import RecommendationsOut, item_out


@app.command()
def recommend(
    user: str = typer.Option(..., "--user", help="Shopper id."),
    k: int = typer.Option(10, "-k", "--k", min=1, max=100, help="How many items."),
    data: Optional[Path] = DataOption,
    llm_url: Optional[str] = LlmUrlOption,
    as_json: bool = JsonOption,
):
    """Recommend k items for a shopper, each with its explanation."""
    from whyrec.pipeline import Recommender

    recommender = Recommender.load(_settings(data, llm_url))
    started = time.time()
    result = recommender.recommend(user, k)
    print(f"recommended {len(result.items)} items in {time.time() - started:.1f}s", file=sys.stderr)
    if as_json:
        items = [item_out(e, recommender.feature_names) for e in result.items]
        print(RecommendationsOut(user_id=result.user_id, items=items).model_dump_json(indent=2))
        return
    for entry in result.items:
        marker = "" if entry.explanation.source.value == "llm" else "  [template]"
        print(f"#{entry.ranked.rank}  {entry.title}  (item {entry.item_id})")
        print(f"    {entry.explanation.text}{marker}")


@app.command()
def explain(
    user: str = typer.Option(..., "--user", help="Shopper id."),
    item: str = typer.Option(..., "--item", help="Item id; it need not be in the shopper's top-k."),
    data: Optional[Path] = DataOption,
    llm_url: Optional[str] = LlmUrlOption,
    as_json: bool = JsonOption,
):
    """Explain why an item ranks where it does for a shopper."""
    from whyrec.pipeline import Recommender

    recommender = Recommender.load(_settings(data, llm_url))
    entry = recommender.explain(user, item)
    if as_json:
        print(item_out(entry, recommender.feature_names).model_dump_json(indent=2))
        return
    print(f"#{entry.ranked.rank} of {entry.ranked.candidates_scored}  {entry.title}  (item {entry.item_id})")
    print(f"    {entry.explanation.text}")
    for fact in entry.explanation.facts:
        print(f"    [{fact.fact_id}] {fact.text}")


@app.command("explain-batch")
def explain_batch(
    data: Optional[Path] = DataOption,
    users: int = typer.Option(100, "--users", min=1, help="The shop's first N shoppers."),
    all_shoppers: bool = typer.Option(False, "--all", help="Every shopper of the data."),
    k: int = typer.Option(10, "-k", "--k", min=1, max=50, help="Items per shopper's slate."),
    batch_users: int = typer.Option(4, "--batch-users", min=1, help="Shoppers whose missing explanations go to the generator as one batch."),
    llm_url: Optional[str] = LlmUrlOption,
    database_url: Optional[str] = typer.Option(None, "--database-url", help="The service's database (the explanation store). Default: $WHYREC_DATABASE_URL, else the SQLite file `whyrec serve` uses."),
    as_json: bool = JsonOption,
):
    """Fill the explanation store for shoppers' slates ahead of their visits (a shop's nightly run).

    Resumable: what is stored already is skipped, so an interrupted run picks up where it stopped."""
    from tqdm import tqdm

    from whyrec.core.schema import ExplanationSource
    from whyrec.explainer import ExplanationStore
    from whyrec.pipeline import Recommender
    from whyrec.service.store import Store

    settings = _settings(data, llm_url, database_url=database_url)
    recommender = Recommender.load(settings)
    explainer = recommender.explainer
    database = Store(settings.resolved_database_url())
    explainer.cache.store = ExplanationStore(database.engine)
    chosen = recommender.catalog.users if all_shoppers else recommender.catalog.users[:users]
    started, total, stored, written, from_model = time.time(), 0, 0, 0, 0
    bar = tqdm(total=len(chosen), desc="explaining slates", unit="shopper")
    for start in range(0, len(chosen), batch_users):
        slates = [recommender.rank(u, k, cold_start=True) for u in chosen[start : start + batch_users]]
        tables = [t for slate in slates if not slate.cold_start for t in slate.tables]  # cold-start reasons are templates
        todo = explainer.missing(tables)
        explained = explainer.explain(todo) if todo else []
        total, stored, written = total + len(tables), stored + len(tables) - len(todo), written + len(todo)
        from_model += sum(e.source is ExplanationSource.LLM for e in explained)
        bar.update(len(chosen[start : start + batch_users]))
        bar.set_postfix(written=written, reused=stored)
    bar.close()
    seconds = time.time() - started
    report = {
        "data": recommender.catalog.name, "shoppers": len(chosen), "k": k, "explanations": total,
        "already_stored": stored, "reused_share": round(stored / total, 4) if total else 0.0,
        "generated": written, "model_written_share_of_generated": round(from_model / written, 4) if written else 0.0,
        "seconds": round(seconds, 1), "explanations_per_second": round(written / seconds, 3) if seconds else 0.0,
        "model": explainer.model_key, "database": database.display_url,
    }
    if as_json:
        print(json.dumps(report, indent=2))
        return
    print(f"{total} explanations for {len(chosen)} shoppers: {stored} already stored ({report['reused_share']:.0%}), "
          f"{written} generated ({report['model_written_share_of_generated']:.0%} by the model) in {seconds:.0f}s, "
          f"{report['explanations_per_second']:.2f}/s; store: {report['database']}")


