"""The SASRec peer baseline: RecBole 1.2.1 in its own venv (.venv-recbole), run as a subprocess.

The training test is skipped when no RecBole venv is found, unless WHYREC_REQUIRE_RECBOLE=1 (as in
scripts/test.sh and CI), where a missing RecBole fails the run instead."""

import json
import os
import random
import subprocess
import sys
import time

import pytest

from whyrec.core.catalog import Catalog, Interaction, Item
from whyrec.core.errors import ConfigError, WhyrecError
from whyrec.core.split import leave_one_out
from whyrec.offline.sasrec_baseline import SasrecRun, find_recbole_python, start_sasrec

N_ITEMS = 60


@pytest.fixture(scope="module")
def recbole_python():
    try:
        return find_recbole_python(None)
    except ConfigError as exc:
        if os.environ.get("WHYREC_REQUIRE_RECBOLE") == "1":
            pytest.fail(str(exc))
        pytest.skip(f"RecBole venv not set up: {exc}")


def cyclic_catalog(users: int = 300, seed: int = 0) -> Catalog:
    """Every shopper walks a fixed hidden cycle of items from a random start: item k is always
    followed by the same next item, so the next item is fully determined by the last one."""
    rng = random.Random(seed)
    order = list(range(N_ITEMS))
    rng.shuffle(order)
    following = {order[i]: order[(i + 1) % N_ITEMS] for i in range(N_ITEMS)}
    items = {f"i{k}": Item(f"i{k}", f"Item {k}") for k in range(N_ITEMS)}
    interactions = []
    for u in range(users):
        current = rng.randrange(N_ITEMS)
        for _ in range(rng.randint(6, 10)):
            interactions.append(Interaction(f"u{u}", f"i{current}"))
            current = following[current]
    return Catalog("cycle", items, interactions)


@pytest.mark.integration
def test_sasrec_refit_on_the_validation_items_learns_a_deterministic_sequence(recbole_python):
    catalog = cyclic_catalog()
    eval_users = catalog.users[:100]
    result = start_sasrec(catalog, eval_users, recbole_python, seed=0, epochs=5, threads=1, log=lambda m: None).result()
    # Chance is about 10 / (60 - 7 history items) = 0.19 for recall@10.
    assert result["users"] == 100
    assert result["recall@10"] >= 0.8
    assert 0 < result["ndcg@10"] <= result["recall@10"] <= result["recall@50"] <= 1
    assert result["epochs_run"] == 5 and result["train_seconds"] > 0
    # The reported figures are the refit model's; the early-stopped model's are kept beside them.
    assert result["refit"] and 1 <= result["best_epoch"] <= 5 and result["refit_seconds"] > 0
    assert 0 < result["early_stopped_ndcg@10"] <= 1


@pytest.mark.integration
def test_stopping_a_started_sasrec_run_ends_its_process_and_removes_its_files(recbole_python):
    # An evaluation that fails or is interrupted while SASRec trains beside it must not leave it running.
    lines: list[str] = []
    run = start_sasrec(cyclic_catalog(), cyclic_catalog().users[:10], recbole_python, epochs=300, threads=1, log=lines.append)
    deadline = time.monotonic() + 120
    while not any("users," in line for line in lines) and time.monotonic() < deadline:
        time.sleep(0.5)  # until the script has read its input and is starting to train
    assert run.running
    run.stop()
    assert not run.running
    assert not run.folder.exists()


def test_a_missing_recbole_interpreter_names_the_setup_script(tmp_path):
    with pytest.raises(ConfigError) as raised:
        find_recbole_python(str(tmp_path / "no-venv" / "bin" / "python"))
    assert "scripts/setup-recbole.sh" in str(raised.value)
    assert "--skip-sasrec" in str(raised.value)


def test_a_failing_baseline_run_reports_the_end_of_its_log():
    # whyrec's own interpreter has no RecBole: the script starts, fails on the import, and says why.
    catalog = cyclic_catalog(users=10)
    with pytest.raises(WhyrecError) as raised:
        start_sasrec(catalog, catalog.users[:3], sys.executable, epochs=1, log=lambda m: None).result()
    assert "SASRec baseline failed" in str(raised.value)
    assert "recbole" in str(raised.value)


@pytest.mark.integration
def test_a_cached_result_is_reused_only_for_the_same_inputs(recbole_python, tmp_path):
    catalog = cyclic_catalog(users=60)
    first = start_sasrec(catalog, catalog.users[:20], recbole_python, epochs=2, threads=1, log=lambda m: None, cache_dir=tmp_path).result()
    again = start_sasrec(catalog, catalog.users[:20], recbole_python, epochs=2, threads=1, log=lambda m: None, cache_dir=tmp_path)
    assert not again.running
    assert again.result()["ndcg@10"] == first["ndcg@10"]
    assert again.result()["reused_from"].startswith(str(tmp_path))
    # Other evaluated shoppers are another experiment: it trains afresh.
    other = start_sasrec(catalog, catalog.users[:10], recbole_python, epochs=2, threads=1, log=lambda m: None, cache_dir=tmp_path)
    assert other.running
    other.stop()


@pytest.mark.integration
def test_an_evaluation_waits_for_the_sasrec_run_another_process_is_training_on_the_same_inputs(recbole_python, office_slice, slice_catalog, tmp_path):
    # `whyrec eval sasrec` started ahead; an evaluation of the same shoppers must use its result, not train twice.
    env = {**os.environ, "WHYREC_CACHE_DIR": str(tmp_path), "WHYREC_RECBOLE_PYTHON": recbole_python}
    ahead = subprocess.Popen(
        [sys.executable, "-m", "whyrec.cli", "eval", "sasrec", "--data", str(office_slice), "--sasrec-epochs", "2", "--threads", "1", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("sasrec/*.training")) and time.monotonic() < deadline:
        time.sleep(0.2)
    users = [c.user_id for c in leave_one_out(slice_catalog).test]  # eval sasrec without --users: every shopper
    lines: list[str] = []
    run = start_sasrec(slice_catalog, users, recbole_python, epochs=2, threads=1, log=lines.append, cache_dir=tmp_path)
    assert not isinstance(run, SasrecRun) and run.running
    assert any(str(ahead.pid) in line for line in lines)
    waited = run.result()
    out, _ = ahead.communicate(timeout=300)
    assert ahead.returncode == 0
    assert waited["ndcg@10"] == json.loads(out)["ndcg@10"] and waited["users"] == len(users)


def test_a_claim_left_by_a_process_that_is_gone_does_not_block_a_new_run(tmp_path):
    catalog = cyclic_catalog(users=10)
    first = start_sasrec(catalog, catalog.users[:3], sys.executable, epochs=1, log=lambda m: None, cache_dir=tmp_path)
    (claim,) = tmp_path.glob("sasrec/*.training")
    first.stop()
    gone = subprocess.Popen(["true"])
    gone.wait()
    claim.write_text(str(gone.pid))  # as a run killed before it could remove its claim leaves it
    second = start_sasrec(catalog, catalog.users[:3], sys.executable, epochs=1, log=lambda m: None, cache_dir=tmp_path)
    assert isinstance(second, SasrecRun)
    second.stop()
