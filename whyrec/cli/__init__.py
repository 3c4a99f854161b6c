"""The `whyrec` command line: one command tree (`whyrec --help`). Each module adds its commands to it."""

from __future__ import annotations

import sys

from whyrec.cli import shopper, training, evaluate, serving, catalog  # noqa: F401  # isort: skip - each registers its commands, in --help order
from whyrec.cli.app import app
from whyrec.core.errors import WhyrecError


def main() -> None:
    try:
        app()
    except WhyrecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)



__all__ = ["app", "main"]
