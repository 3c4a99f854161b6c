"""The one record of what `whyrec train` trained: `manifest.json` in the models folder.

Every stage serves with the manifest's values (history window, features, fusion weights), so they
cannot drift apart; a setting that disagrees with it is an error naming the command that retrains,
not a silent retrain. It is written last and atomically: a folder without one was trained before
whyrec kept manifests, or its training did not finish."""

from __future__ import annotations

import os
import tempfile
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from whyrec.core.config import Settings
from whyrec.core.errors import ConfigError

MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1  # raise when a field changes meaning; older manifests then ask for `whyrec train`


class TrainedManifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = MANIFEST_VERSION
    history_window: int  # the recent history items retrieval, the ranker and the fact tables read
    feature_names: tuple[str, ...]  # the retrieval features the ranker weighs, in order
    fusion_weights: dict[str, float]  # of the retrieval sources, tuned on validation shoppers
    encoder: str
    data: str  # the catalog's name
    data_fingerprint: str
    template: str  # the prompt label in use when the models were trained
    adapter: str | None  # the generator's LoRA adapter then, None: none
    trained_at: datetime
    feedback_rounds: int = 0  # `whyrec train-feedback` runs that replaced the ranker since

    def write(self, folder: Path) -> None:
        """Replace `folder`'s manifest whole: a reader sees the old one or the new one, never half."""
        folder.mkdir(parents=True, exist_ok=True)
        handle, staging = tempfile.mkstemp(prefix=f".{MANIFEST_FILE}-", dir=folder)
        try:
            with os.fdopen(handle, "w") as out:
                out.write(self.model_dump_json(indent=2))
            os.replace(staging, folder / MANIFEST_FILE)
        finally:
            Path(staging).unlink(missing_ok=True)


def read_manifest(folder: Path, retrain: str) -> TrainedManifest:
    """The manifest of the models in `folder`; a missing, damaged or outdated one is a ConfigError
    naming `retrain` (the command that writes a new one)."""
    path = folder / MANIFEST_FILE
    if not path.exists():
        raise ConfigError(
            f"the models at {folder} have no {MANIFEST_FILE} (trained by an older whyrec, or their training did not finish): run `{retrain}`"
        )
    try:
        manifest = TrainedManifest.model_validate_json(path.read_text())
    except (OSError, ValidationError) as exc:
        reason = str(exc).strip().splitlines()[0][:300]
        raise ConfigError(f"cannot read {path} ({type(exc).__name__}: {reason}): run `{retrain}` to rebuild it") from None
    if manifest.version != MANIFEST_VERSION:
        raise ConfigError(f"{path} is manifest version {manifest.version}, this whyrec reads version {MANIFEST_VERSION}: run `{retrain}`")
    return manifest


def check_settings(manifest: TrainedManifest, settings: Settings, folder: Path, retrain: str) -> None:
    """Only a value the user set contradicts the manifest; an unset one takes the manifest's."""
    if "history_window" in settings.model_fields_set and settings.history_window != manifest.history_window:
        raise ConfigError(
            f"WHYREC_HISTORY_WINDOW={settings.history_window} contradicts the trained models at {folder} "
            f"(trained with a history window of {manifest.history_window}): run `{retrain}` to retrain with "
            f"{settings.history_window}, or unset it"
        )


def check_stage(manifest: TrainedManifest, stage: str, history_window: int, feature_names: tuple[str, ...], folder: Path, retrain: str) -> None:
    """A stage loaded from its own files must have been trained in the run the manifest records."""
    if history_window != manifest.history_window or tuple(feature_names) != manifest.feature_names:
        raise ConfigError(
            f"the {stage} reads a history window of {history_window} and features {', '.join(feature_names)}, but the manifest at "
            f"{folder} says {manifest.history_window} and {', '.join(manifest.feature_names)}: run `{retrain}` to train them together"
        )
