"""Errors a user can cause. The CLI and API print these as one line, without a traceback."""

from __future__ import annotations

from pathlib import Path


class WhyrecError(Exception):
    """Base class for every error caused by input, data or configuration (not by a bug)."""


class DataError(WhyrecError):
    """A data file is malformed. Names the file, the row and the field."""

    def __init__(self, file: str | Path, message: str, *, row: str | int | None = None, field: str | None = None):
        self.file = str(file)
        self.row = row
        self.field = field
        self.detail = message
        where = [self.file]
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{', '.join(where)}: {message}")


class UnknownShopper(WhyrecError):
    def __init__(self, user_id: str):
        self.user_id = user_id
        super().__init__(f"unknown shopper '{user_id}': no interactions for this id in the loaded data")


class UnknownItem(WhyrecError):
    def __init__(self, item_id: str):
        self.item_id = item_id
        super().__init__(f"unknown item '{item_id}': not in the loaded catalog")


class ConfigError(WhyrecError):
    """A setting, model folder or template is missing or invalid."""
