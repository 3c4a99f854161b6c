"""The Gradio views on the API's FastAPI app: the Shop view at /shop (public); Support at /support
(staff with the support role), the Prompt lab at /prompt-lab (the prompt_engineer role), and both as
tabs at /staff (an account with both roles). Gradio has no per-tab login, so each protected view is
a separately mounted app with its own login check."""

from __future__ import annotations

import gradio as gr
from fastapi import FastAPI
from fastapi.responses import RedirectResponse

from whyrec.core.config import Settings
from whyrec.service.accounts import Role, authenticate
from whyrec.service.service import WhyrecService
from whyrec.ui.shop import CSS as SHOP_CSS
from whyrec.ui.shop import build_shop
from whyrec.ui.staff import CSS as STAFF_CSS
from whyrec.ui.staff import build_prompt_lab, build_staff, build_support


def mount_views(app: FastAPI, service: WhyrecService, settings: Settings) -> FastAPI:
    accounts = app.state.accounts  # read once, by create_app

    def login_with(*roles: Role):
        def login(user: str, password: str) -> bool:
            account = authenticate(accounts, user, password)
            return account is not None and set(roles) <= account.roles

        return login

    @app.get("/", include_in_schema=False)
    def _home() -> RedirectResponse:
        return RedirectResponse("/shop/")

    # Theme and css go to the mount call: Blocks-level ones are ignored when mounted.
    gr.mount_gradio_app(
        app, build_staff(service, settings), path="/staff", auth=login_with(Role.SUPPORT, Role.PROMPT_ENGINEER),
        auth_message="Support and Prompt lab: staff login (an account with both roles).", css=STAFF_CSS, show_error=True,
    )
    gr.mount_gradio_app(
        app, build_support(service, settings), path="/support", auth=login_with(Role.SUPPORT),
        auth_message="Support: staff login (support role).", css=STAFF_CSS, show_error=True,
    )
    gr.mount_gradio_app(
        app, build_prompt_lab(service, settings), path="/prompt-lab", auth=login_with(Role.PROMPT_ENGINEER),
        auth_message="Prompt lab: staff login (prompt_engineer role).", css=STAFF_CSS, show_error=True,
    )
    gr.mount_gradio_app(app, build_shop(service, settings), path="/shop", css=SHOP_CSS, show_error=True)
    return app
