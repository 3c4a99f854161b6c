"""The `whyrec` command tree and the options its commands share."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from whyrec.core.config import Settings

app = typer.Typer(
    help="whyrec: recommendations with a true, plain-language 'why you see this'.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
models_app = typer.Typer(help="Fetch and prepare the models whyrec runs on.", no_args_is_help=True)
app.add_typer(models_app, name="models")
llm_app = typer.Typer(help="Serve the generator over the OpenAI API with vLLM.", no_args_is_help=True)
app.add_typer(llm_app, name="llm")
eval_app = typer.Typer(help="Measure whyrec against baselines on held-out data.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
explainer_app = typer.Typer(help="Make the explanation generator better on this shop's data.", no_args_is_help=True)
app.add_typer(explainer_app, name="explainer")

DataOption = typer.Option(None, "--data", help="Data folder (Amazon X.item.json + X.inter.json, or generic items/interactions files). Default: $WHYREC_DATA, else the bundled sample store.")
JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON.")
LlmUrlOption = typer.Option(None, "--llm-url", help="OpenAI-compatible server (vLLM) base URL, e.g. http://127.0.0.1:8000/v1. Default: in-process transformers.")


def _settings(data: Optional[Path] = None, llm_url: Optional[str] = None, **overrides) -> Settings:
    values = {k: v for k, v in overrides.items() if v is not None}
    if data is not None:
        values["data"] = data
    if llm_url is not None:
        values["llm_url"] = llm_url
    return Settings(**values)


