"""The Gradio app."""

from whyrec.ui.app import build_app

__all__ = ["build_app"]
