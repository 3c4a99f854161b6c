"""`whyrec serve`: the recommender, the store, the JSON API and the Gradio views on one app."""

from __future__ import annotations

from fastapi import FastAPI

from whyrec.api import create_app
from whyrec.config import Settings
from whyrec.pipeline import Log, Recommender, stderr_log
from whyrec.service import WhyrecService
from whyrec.store import Store
from whyrec.telemetry import ServiceMetrics


def build_server(settings: Settings, recommender: Recommender | None = None, log: Log = stderr_log) -> FastAPI:
    """The whole service. The store's schema is created on start; the models load once here."""
    from whyrec.ui import mount_views  # gradio is heavy: only the served app needs it

    store = Store(settings.resolved_database_url(), settings.resolved_write_spool(), settings.write_spool_max, settings.write_retry_s)
    log(f"impression and feedback store: {store.engine.url.render_as_string(hide_password=True)}")
    service = WhyrecService(recommender or Recommender.load(settings, log=log), store, ServiceMetrics())
    if settings.prewarm_shoppers and not settings.page_waits_for_model:
        queued = service.prewarm(settings.prewarm_shoppers, settings.shop_k)
        log(f"background explainer: {queued} recently active shoppers queued for their next slate's explanations")
    return mount_views(create_app(service, settings), service, settings)
