"""`whyrec serve`: the recommender, the store, the JSON API and the Gradio views on one app; and
`whyrec worker`, which runs the background explainer's jobs for replicas that share a database."""

from __future__ import annotations

import ctypes
import os

from fastapi import FastAPI

from whyrec.core.config import Settings
from whyrec.pipeline import Log, Recommender, stderr_log
from whyrec.service.api import create_app
from whyrec.service.jobqueue import conninfo, run_worker
from whyrec.service.service import WhyrecService
from whyrec.service.store import Store
from whyrec.service.telemetry import ServiceMetrics

M_ARENA_MAX = -8  # glibc's mallopt parameter number
MALLOC_ARENAS = 2


def bound_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas for this process (unless MALLOC_ARENA_MAX is set).

    glibc gives threads that allocate at once arenas of their own, up to 8 per core, and keeps their
    freed pages: with request threads, the background explainer and torch all allocating, a
    `whyrec serve` under the soak's load grew by 1.8 GB before it levelled off (the run before this
    cap, README "Load"). The server and the worker call it before their models load and their
    threads start. False where this is not glibc."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_ARENA_MAX, arenas))


def build_server(settings: Settings, recommender: Recommender | None = None, log: Log = stderr_log) -> FastAPI:
    """The whole service. The store's schema is created on start; the models load once here."""
    from whyrec.ui import mount_views  # gradio is heavy: only the served app needs it

    bound_malloc_arenas()
    store = Store(settings.resolved_database_url(), settings.resolved_write_spool(), settings.write_spool_max, settings.write_retry_s)
    log(f"impression and feedback store: {store.engine.url.render_as_string(hide_password=True)}")
    service = WhyrecService(recommender or Recommender.load(settings, log=log), store, ServiceMetrics())
    if settings.prewarm_shoppers and not settings.page_waits_for_model:
        queued = service.prewarm(settings.prewarm_shoppers, settings.shop_k)
        log(f"background explainer: {queued} recently active shoppers queued for their next slate's explanations")
    return mount_views(create_app(service, settings), service, settings)


def serve_jobs(settings: Settings, concurrency: int = 1, log: Log = stderr_log) -> None:
    """`whyrec worker`: the models load once, as for `whyrec serve`, then the queue's jobs run
    until a signal stops the worker. The service is the replicas' own (their database, their
    explanation store, the same ranking), so what it stores is what their pages look up."""
    bound_malloc_arenas()
    database_url = settings.resolved_database_url()
    conninfo(database_url)  # a wrong database fails before the models spend their time loading
    store = Store(database_url)  # reads only (the shoppers' histories): no spool of writes
    log(f"job queue and explanation store: {store.display_url}")
    service = WhyrecService(Recommender.load(settings, log=log), store, ServiceMetrics())
    try:
        run_worker(database_url, service.explain_next_slate, concurrency, log)
    finally:
        service.close()
        store.close()
