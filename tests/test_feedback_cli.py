"""`whyrec train-feedback`: the ranker learns from the impression log end to end (store -> slates ->
fine-tuning -> the serving checkpoint), run as the real CLI on a copy of the session's models."""

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from whyrec.core.catalog import EventKind
from whyrec.core.schema import (
    Explanation,
    ExplanationSource,
    FactTable,
    RankedItem,
    RecommendedItem,
)
from whyrec.ranker.model import CHECKPOINT_META
from whyrec.service.store import Store

WHYREC = [sys.executable, "-m", "whyrec.cli"]


def _shown(catalog, item_id: str) -> RecommendedItem:
    ranked = RankedItem(item_id, 1, 0.0, 0.0, (), (), 10, (0.0, 0.0, 0.0))
    explanation = Explanation("", ExplanationSource.TEMPLATE, True, (), "shopper.v1", "template", ())
    return RecommendedItem(item_id, catalog.items[item_id].title, ranked, explanation, FactTable("u", item_id, ()))


@pytest.fixture(scope="module")
def logged_traffic(tmp_path_factory, slice_catalog, slice_retriever):
    """Three hours ago 50 slice shoppers were each shown their top 10 candidates; within the next hour
    they clicked exactly the shown items of one category and skipped the rest."""
    shown = {u: [c.item_id for c in slice_retriever.candidates(slice_catalog.sequence(u), 10)] for u in slice_catalog.users[:50]}
    liked = Counter(slice_catalog.items[i].category for items in shown.values() for i in items).most_common(1)[0][0]
    url = f"sqlite:///{tmp_path_factory.mktemp('feedback-store') / 'whyrec.sqlite3'}"
    store, now = Store(url), datetime.now(timezone.utc)
    for user, items in shown.items():
        store.log_impression(user, "slate", slice_catalog.sequence(user), [_shown(slice_catalog, i) for i in items], [[]] * len(items), (),
                             served_at=now - timedelta(hours=3))
        for item in items:
            if slice_catalog.items[item].category == liked:
                store.add_event(user, item, EventKind.CLICK, at=now - timedelta(hours=2, minutes=30))
    return url


@pytest.mark.integration
def test_train_feedback_updates_the_serving_ranker_when_held_out_slates_improve(logged_traffic, office_slice, cache_dir, slice_training, tmp_path):
    own_cache = tmp_path / "cache"
    shutil.copytree(cache_dir / "data", own_cache / "data")  # the session's models stay as they were
    env = {**os.environ, "WHYREC_CACHE_DIR": str(own_cache), "OMP_WAIT_POLICY": "PASSIVE"}
    args = ["train-feedback", "--data", str(office_slice), "--database-url", logged_traffic, "--window-hours", "1", "--epochs", "2", "--learning-rate", "1e-4", "--json"]
    done = subprocess.run([*WHYREC, *args], capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["held_out"] >= 3 and summary["report"]["groups"] >= 20, summary
    assert summary["engaged_above_skipped_after"] > summary["engaged_above_skipped_before"] + 0.05, summary
    assert summary["kept"] is True
    checkpoint = Path(summary["report"]["checkpoint"])
    assert checkpoint.is_relative_to(own_cache)
    meta = json.loads((checkpoint / CHECKPOINT_META).read_text())
    manifest = json.loads((checkpoint.parent / "manifest.json").read_text())
    assert manifest["feedback_rounds"] == 1 and meta["feedback_groups"] == summary["report"]["groups"]


def test_train_feedback_with_an_empty_log_is_a_one_line_error(office_slice, cache_dir, slice_training, tmp_path):
    env = {**os.environ, "WHYREC_CACHE_DIR": str(cache_dir), "OMP_WAIT_POLICY": "PASSIVE"}
    args = ["train-feedback", "--data", str(office_slice), "--database-url", f"sqlite:///{tmp_path / 'empty.sqlite3'}"]
    done = subprocess.run([*WHYREC, *args], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 1
    assert "no usable slates" in done.stderr and "Traceback" not in done.stderr
