"""The trained state has one owner: `whyrec train` writes manifest.json, every serving stage takes its
history window, features and fusion weights from it, and a setting that contradicts it is a one-line
error naming the command that retrains."""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict

import pytest

from whyrec.core.catalog import fingerprint
from whyrec.core.errors import ConfigError
from whyrec.pipeline import TrainedManifest, load_trained, models_folder, ranker_folder
from whyrec.ranker import CHECKPOINT_META


def _manifest_path(settings, catalog):
    return models_folder(settings, catalog) / "manifest.json"


@pytest.fixture()
def models_copy(slice_settings, slice_catalog, slice_training, tmp_path):
    """The slice's trained models and embeddings, copied so that a test can change them; the
    history window left unset, as a shop that never set WHYREC_HISTORY_WINDOW."""
    shutil.copytree(slice_settings.cache_dir / "data", tmp_path / "cache" / "data", ignore=shutil.ignore_patterns("*.tmp", ".*"))
    settings = slice_settings.model_copy(update={"cache_dir": tmp_path / "cache", "auto_train": False})
    assert "history_window" not in settings.model_fields_set
    return settings


def test_training_writes_the_manifest_whose_window_features_and_weights_every_serving_stage_uses(slice_settings, slice_catalog, slice_training):
    manifest = TrainedManifest.model_validate_json(_manifest_path(slice_settings, slice_catalog).read_text())
    assert manifest.history_window == slice_settings.history_window
    assert manifest.fusion_weights == slice_training.fusion_weights
    assert manifest.data == slice_catalog.name and manifest.data_fingerprint == fingerprint(slice_catalog)
    assert manifest.template and manifest.feedback_rounds == 0

    served = load_trained(slice_settings.model_copy(update={"auto_train": False}), slice_catalog, log=lambda m: None)
    assert served.manifest == manifest
    retriever, ranker = served.retriever, served.ranker
    assert retriever.embedding.window == retriever.cooccurrence.history_window == ranker.history_window == manifest.history_window
    assert ranker.feature_names == retriever.feature_names == manifest.feature_names
    assert asdict(retriever.weights) == manifest.fusion_weights
    assert "fusion_weights" not in retriever.sequence.metadata  # one owner: the manifest


def test_a_history_window_set_against_the_manifest_is_one_error_line_naming_whyrec_train(slice_settings, slice_catalog, slice_training, office_slice):
    manifest_file = _manifest_path(slice_settings, slice_catalog)
    trained_window = TrainedManifest.model_validate_json(manifest_file.read_text()).history_window
    before = manifest_file.stat().st_mtime_ns
    env = {**os.environ, "WHYREC_CACHE_DIR": str(slice_settings.cache_dir), "WHYREC_HISTORY_WINDOW": str(trained_window + 2), "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run(
        [sys.executable, "-m", "whyrec.cli", "recommend", "--data", str(office_slice), "--user", slice_catalog.users[0], "-k", "1"],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert f"WHYREC_HISTORY_WINDOW={trained_window + 2}" in errors[0] and f"history window of {trained_window}" in errors[0]
    assert f"whyrec train --data {office_slice}" in errors[0]
    assert "Traceback" not in done.stderr
    assert manifest_file.stat().st_mtime_ns == before  # refused, not retrained


def test_with_the_window_unset_every_stage_serves_the_manifests_window(models_copy, slice_catalog):
    # Models trained with a window of 3 (the checkpoint records the window its ranker reads).
    manifest_file = _manifest_path(models_copy, slice_catalog)
    manifest = TrainedManifest.model_validate_json(manifest_file.read_text())
    manifest.model_copy(update={"history_window": 3}).write(manifest_file.parent)
    checkpoint = ranker_folder(models_copy, slice_catalog) / CHECKPOINT_META
    checkpoint.write_text(json.dumps({**json.loads(checkpoint.read_text()), "history_window": 3}))

    served = load_trained(models_copy, slice_catalog, log=lambda m: None)
    assert served.retriever.embedding.window == served.retriever.cooccurrence.history_window == served.ranker.history_window == 3
    user = next(u for u in slice_catalog.users if len(slice_catalog.sequence(u)) > 3)
    history = slice_catalog.sequence(user)
    ranked = served.ranker.rank([slice_catalog.items[i] for i in history], served.retriever.candidates(history, 5), slice_catalog.items, attribute=1)
    attributed = [a.history_item_id for a in ranked[0].attributions]
    assert len(attributed) == 3 and set(attributed) == set(history[-3:])


def test_models_trained_without_a_manifest_are_refused_even_with_auto_train_naming_whyrec_train(models_copy, slice_catalog, office_slice):
    _manifest_path(models_copy, slice_catalog).unlink()  # an older whyrec's folder, or a training that crashed
    weights = ranker_folder(models_copy, slice_catalog) / "model.safetensors"
    before = weights.stat().st_mtime_ns
    with pytest.raises(ConfigError) as error:
        load_trained(models_copy.model_copy(update={"auto_train": True}), slice_catalog, log=lambda m: None)
    message = str(error.value)
    assert "\n" not in message and "manifest.json" in message and f"whyrec train --data {office_slice}" in message
    assert weights.stat().st_mtime_ns == before
