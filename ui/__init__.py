"""The Gradio UI: the demo app, and the service's Shop view and staff console (Support, Prompt lab)."""

from whyrec.ui.app import build_app
from whyrec.ui.mount import mount_views

__all__ = ["build_app", "mount_views"]
