"""The Gradio UI: the service's Shop view and staff console (Support, Prompt lab)."""

from whyrec.ui.mount import mount_views

__all__ = ["mount_views"]
