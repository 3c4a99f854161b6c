import json
import os
import subprocess
import sys

import pytest

WHYREC = [sys.executable, "-m", "whyrec.cli"]


def _run(args, cache_dir, timeout=600):
    env = {**os.environ, "WHYREC_CACHE_DIR": str(cache_dir), "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run([*WHYREC, *args], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.integration
def test_recommend_json_returns_k_explained_items(office_slice, cache_dir, slice_training):
    user = next(iter(json.loads((office_slice / "Office.inter.json").read_text())))
    done = _run(["recommend", "--data", str(office_slice), "--user", user, "-k", "3", "--json"], cache_dir)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["user_id"] == user and len(result["items"]) == 3
    assert [i["rank"] for i in result["items"]] == [1, 2, 3]
    for item in result["items"]:
        assert set(item["scores"]) == {"retrieval", "ranker", "features"}  # the API's item shape (whyrec.core.protocol)
        explanation = item["explanation"]
        assert explanation["text"] and explanation["source"] in {"llm", "template"} and explanation["facts"]
        assert explanation["grounded"] == (explanation["source"] == "llm")
        table = {f["id"]: f for f in explanation["fact_table"]}
        assert all(table[f["id"]] == f for f in explanation["facts"])  # the cited facts are the table's own
        assert any(f["kind"] == "item_title" and f["item_id"] == item["item_id"] for f in table.values())
        assert all(f["history_item_id"] for f in table.values() if f["kind"] == "history_item")
    assert "training them now" not in done.stderr  # the session's checkpoints were reused


@pytest.mark.integration
def test_explain_ranks_an_item_outside_the_top_k(office_slice, cache_dir, slice_catalog, slice_recommender):
    user = slice_catalog.users[0]
    shown = {i.item_id for i in slice_recommender.recommend(user, 3).items}
    history = set(slice_catalog.sequence(user))
    outsider = next(i for i in reversed(list(slice_catalog.items)) if i not in shown and i not in history)
    done = _run(["explain", "--data", str(office_slice), "--user", user, "--item", outsider, "--json"], cache_dir)
    assert done.returncode == 0, done.stderr
    entry = json.loads(done.stdout)
    assert entry["item_id"] == outsider and entry["rank"] > 3 and entry["explanation"]["text"]


@pytest.mark.integration
def test_eval_ranker_json_compares_whyrec_with_every_baseline_including_sasrec(office_slice, cache_dir, slice_training):
    done = _run(["eval", "ranker", "--data", str(office_slice), "--users", "12", "--sasrec-epochs", "2", "--json"], cache_dir, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert "leave-one-out" in report["protocol"] and report["users"] == 12
    assert set(report["methods"]) >= {"whyrec", "popularity", "embedding", "cooccurrence", "sasrec"}
    for metrics in report["methods"].values():
        assert set(metrics) >= {"ndcg@10", "recall@10", "recall@50", "mrr"}
    assert set(report["candidates"]) >= {"recall@50", "recall@100"}
    assert set(report["diversity"]) >= {"intra_list_diversity@10", "catalog_coverage@10"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--user", "no-such-shopper"], "unknown shopper 'no-such-shopper'"),
        (["--user", "__FIRST__", "--item", "no-such-item"], "unknown item 'no-such-item'"),
    ],
)
@pytest.mark.integration
def test_unknown_ids_give_a_one_line_error_without_a_traceback(args, message, office_slice, cache_dir, slice_training):
    user = next(iter(json.loads((office_slice / "Office.inter.json").read_text())))
    args = [user if a == "__FIRST__" else a for a in args]
    command = "explain" if "--item" in args else "recommend"
    done = _run([command, "--data", str(office_slice), *args], cache_dir)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == f"error: {message}: " + (
        "no interactions for this id in the loaded data" if "shopper" in message else "not in the loaded catalog"
    )
    assert "Traceback" not in done.stderr


def test_bad_data_folder_is_a_one_line_error(tmp_path):
    done = _run(["recommend", "--data", str(tmp_path / "nope"), "--user", "1"], tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "not a folder" in done.stderr


def test_help_lists_the_command_tree(tmp_path):
    done = _run(["--help"], tmp_path)
    for command in ("recommend", "explain", "train", "models", "demo"):
        assert command in done.stdout


@pytest.mark.integration
def test_eval_explanations_reports_the_keys_later_checks_read(office_slice, cache_dir, slice_training):
    refs = os.path.join(os.path.dirname(__file__), "data", "reference_cases.jsonl")
    done = _run(["eval", "explanations", "--data", str(office_slice), "--users", "2", "--references", refs, "--json"], cache_dir)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    for key in ("raw_grounded_rate", "shown_grounded_rate", "fallback_rate", "unsupported_claim_rate", "usr", "mean_words",
                "history_citation_rate", "seconds_per_explanation", "explanations_per_second"):
        assert isinstance(report[key], float), key
    assert report["shown_grounded_rate"] == 1.0
    assert report["grounding_check"]["sentences"] >= 100 and 0 <= report["grounding_check"]["recall"] <= 1
    assert set(report["reference"]) >= {"bleu4", "rougeL", "bertscore_f1"} and "layer" in report["reference"]["bertscore_model"]


def test_eval_explanations_rejects_an_unknown_backend(cache_dir):
    done = _run(["eval", "explanations", "--backend", "gpu"], cache_dir, timeout=300)
    assert done.returncode == 1 and "--backend must be 'local', 'openai' or 'none'" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.integration
def test_explain_batch_fills_the_store_and_a_second_run_reuses_every_explanation(office_slice, cache_dir, slice_training, tmp_path):
    database = f"sqlite:///{tmp_path / 'whyrec.sqlite3'}"
    args = ["explain-batch", "--data", str(office_slice), "--users", "2", "-k", "2", "--database-url", database, "--json"]
    first = _run(args, cache_dir)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["explanations"] == 4 and report["generated"] == 4 and report["already_stored"] == 0
    assert "explaining slates" in first.stderr  # the progress bar
    again = json.loads(_run(args, cache_dir).stdout)
    assert again["already_stored"] == 4 and again["generated"] == 0 and again["reused_share"] == 1.0
