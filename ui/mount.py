"""The Gradio views on the API's FastAPI app: the Shop view at /shop (public) and the staff console
(Support, Prompt lab) at /staff behind the staff login. Gradio has no per-tab login, so the
protected views are a separately mounted app."""

from __future__ import annotations

import gradio as gr
from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from whyrec.config import Settings
from whyrec.passwords import verify_password
from whyrec.service import WhyrecService
from whyrec.ui.shop import CSS as SHOP_CSS
from whyrec.ui.shop import build_shop
from whyrec.ui.staff import CSS as STAFF_CSS
from whyrec.ui.staff import build_staff


def mount_views(app: FastAPI, service: WhyrecService, settings: Settings) -> FastAPI:
    def staff_login(user: str, password: str) -> bool:
        return user == settings.staff_user and verify_password(password, settings.staff_password_hash)

    @app.get("/", include_in_schema=False)
    def _home() -> RedirectResponse:
        return RedirectResponse("/shop/")

    # Theme and css go to the mount call: Blocks-level ones are ignored when mounted.
    gr.mount_gradio_app(
        app, build_staff(service, settings), path="/staff", auth=staff_login,
        auth_message="Support and Prompt lab: staff login.", css=STAFF_CSS, show_error=True,
    )
    gr.mount_gradio_app(app, build_shop(service, settings), path="/shop", css=SHOP_CSS, show_error=True)
    return app
