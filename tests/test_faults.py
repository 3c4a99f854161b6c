"""Faults injected for real: the LLM server stopped, slow or answering garbage; the database
unavailable; damaged model files. Each test names the fault it injects and what the shopper, the
agent or the operator sees."""

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from whyrec.service.passwords import hash_password

pytestmark = pytest.mark.integration
STAFF = ("agent", "correct horse")


# ---- helpers ----


class FakeLLM:
    """A tiny OpenAI-compatible server on a real socket. Only for the faults the real vLLM cannot
    produce on demand: answering slower than the deadline, and answering garbage."""

    def __init__(self):
        self.mode = "slow"
        self.delay_s = 30.0
        self.requests = 0
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                fake.requests += 1
                if fake.mode == "slow":
                    time.sleep(fake.delay_s)
                    body, kind = _completion("Because you bought it."), "application/json"
                elif fake.mode == "html":
                    body, kind = b"<html><body>502 Bad Gateway</body></html>", "text/html"
                else:  # "noise": a well-formed completion whose text is no sentence at all
                    body, kind = _completion("### {{{ ]]] ###"), "application/json"
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", kind)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the client gave up waiting

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _completion(content: str) -> bytes:
    return json.dumps({
        "id": "x", "object": "chat.completion", "created": 0, "model": "fake",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }).encode()


def _client(settings, catalog, retriever, ranker, store):
    from whyrec.pipeline import Recommender, build_explainer
    from whyrec.service.api import create_app
    from whyrec.service.service import WhyrecService
    from whyrec.service.telemetry import ServiceMetrics

    recommender = Recommender(settings, catalog, retriever, ranker, build_explainer(settings))
    return TestClient(create_app(WhyrecService(recommender, store, ServiceMetrics()), settings))


def _metric(client, name, **labels) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f"{name}{{{wanted}}} " if labels else f"{name} "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _settings(slice_settings, tmp_path, **update):
    return slice_settings.model_copy(update={
        "max_new_tokens": 40,
        "database_url": f"sqlite:///{tmp_path / 'whyrec.sqlite3'}",
        "staff_user": STAFF[0],
        "staff_password_hash": hash_password(STAFF[1], iterations=1_000),
        **update,
    })


@pytest.fixture(scope="module")
def fake_llm():
    server = FakeLLM()
    yield server
    server.close()


# ---- the LLM server ----


def test_a_slow_llm_server_gets_template_explanations_within_the_deadline_and_counted(fake_llm, slice_settings, slice_catalog, slice_retriever, slice_ranker, tmp_path):
    from whyrec.service.store import Store

    fake_llm.mode, fake_llm.delay_s = "slow", 60.0  # answers long after the deadline (and the client timeout stays longer)
    settings = _settings(slice_settings, tmp_path, llm_url=fake_llm.url, llm_model="fake", llm_timeout_s=120.0, explain_deadline_s=2.0)
    with _client(settings, slice_catalog, slice_retriever, slice_ranker, Store(settings.database_url)) as client:
        started = time.monotonic()
        response = client.get(f"/api/shoppers/{slice_catalog.users[20]}/recommendations", params={"k": 3})
        took = time.monotonic() - started
        assert response.status_code == 200, response.text
        items = response.json()["items"]
        assert len(items) == 3
        for item in items:
            explanation = item["explanation"]
            assert explanation["source"] == "template" and explanation["fallback"] == "llm_deadline_exceeded"
            assert explanation["attempts"][-1]["reason"].startswith("llm deadline exceeded")
            assert explanation["text"]
        # Ranking takes a second or two here; the server would have taken 60 s.
        assert took < 30, f"the slate took {took:.1f}s"
        assert _metric(client, "whyrec_explanation_fallbacks_total", reason="llm_deadline_exceeded") == 3


def test_a_server_still_late_is_not_asked_again_until_it_catches_up(fake_llm, slice_settings, slice_catalog, slice_retriever, slice_ranker, tmp_path):
    from whyrec.service.store import Store

    fake_llm.mode, fake_llm.delay_s = "slow", 6.0
    settings = _settings(slice_settings, tmp_path, llm_url=fake_llm.url, llm_model="fake", explain_deadline_s=3.0, llm_max_late=1)
    user = slice_catalog.users[24]
    with _client(settings, slice_catalog, slice_retriever, slice_ranker, Store(settings.database_url)) as client:
        late = client.app.state.service.recommender.explainer.late
        asked_before = fake_llm.requests
        first = client.get(f"/api/shoppers/{user}/recommendations", params={"k": 2})
        assert [i["explanation"]["fallback"] for i in first.json()["items"]] == ["llm_deadline_exceeded"] * 2
        asked = fake_llm.requests
        assert asked > asked_before and late.count == 1

        second = client.get(f"/api/shoppers/{user}/recommendations", params={"k": 2})
        assert second.status_code == 200 and fake_llm.requests == asked, "the late server was asked again"
        for item in second.json()["items"]:
            assert item["explanation"]["fallback"] == "llm_deadline_exceeded"
            assert "still running past their deadline" in item["explanation"]["attempts"][-1]["reason"]

        fake_llm.mode = "noise"  # the server catches up (and now answers at once)
        deadline = time.monotonic() + 30
        while late.count and time.monotonic() < deadline:
            time.sleep(0.2)
        third = client.get(f"/api/shoppers/{user}/recommendations", params={"k": 2})
        assert fake_llm.requests > asked
        assert all(i["explanation"]["fallback"] == "llm_output_unparseable" for i in third.json()["items"])


@pytest.mark.parametrize("mode", ["html", "noise"])
def test_an_llm_server_answering_garbage_gets_template_explanations_marked_unparseable(mode, fake_llm, slice_settings, slice_catalog, slice_retriever, slice_ranker, tmp_path):
    from whyrec.service.store import Store

    fake_llm.mode = mode  # html: a body that is not a chat completion; noise: a completion with no sentence in it
    settings = _settings(slice_settings, tmp_path, llm_url=fake_llm.url, llm_model="fake", explain_deadline_s=20.0)
    with _client(settings, slice_catalog, slice_retriever, slice_ranker, Store(settings.database_url)) as client:
        response = client.get(f"/api/shoppers/{slice_catalog.users[21]}/recommendations", params={"k": 2})
        assert response.status_code == 200, response.text
        for item in response.json()["items"]:
            explanation = item["explanation"]
            assert explanation["source"] == "template" and explanation["fallback"] == "llm_output_unparseable"
            assert all(a["reason"].startswith("llm output unparseable") for a in explanation["attempts"])
        assert _metric(client, "whyrec_explanation_fallbacks_total", reason="llm_output_unparseable") == 2

        fake_llm.mode, fake_llm.delay_s = "slow", 0.0  # the server is fixed: it answers with a sentence at once
        asked = fake_llm.requests
        again = client.get(f"/api/shoppers/{slice_catalog.users[21]}/recommendations", params={"k": 2})
        assert fake_llm.requests > asked, "the garbage was cached instead of asking the server again"
        assert all(i["explanation"]["attempts"][0]["raw_output"] == "Because you bought it." for i in again.json()["items"])


def test_a_stopped_vllm_server_gets_template_explanations_and_its_return_is_picked_up_without_a_restart(vllm_server, slice_settings, slice_catalog, slice_retriever, slice_ranker, tmp_path):
    from whyrec.core.config import DEFAULT_GENERATOR
    from whyrec.service.store import Store

    settings = _settings(slice_settings, tmp_path, llm_url=vllm_server.ensure_running(), explain_deadline_s=120.0, max_new_tokens=24)
    user = slice_catalog.users[22]
    with _client(settings, slice_catalog, slice_retriever, slice_ranker, Store(settings.database_url)) as client:
        vllm_server.stop()
        down = client.get(f"/api/shoppers/{user}/recommendations", params={"k": 2})
        assert down.status_code == 200, down.text
        for item in down.json()["items"]:
            explanation = item["explanation"]
            assert explanation["source"] == "template" and explanation["fallback"] == "llm_unavailable"
            assert explanation["attempts"][0]["reason"].startswith("llm unavailable")
        assert _metric(client, "whyrec_explanation_fallbacks_total", reason="llm_unavailable") == 2

        vllm_server.start()  # same URL; whyrec is not restarted
        up = client.get(f"/api/shoppers/{user}/recommendations", params={"k": 2})
        assert up.status_code == 200, up.text
        for item in up.json()["items"]:
            explanation = item["explanation"]
            # The server answered (the check may still turn a weak answer into the template).
            assert explanation["fallback"] != "llm_unavailable" and explanation["model"] == DEFAULT_GENERATOR
            assert explanation["attempts"][0]["raw_output"].strip(), "the server's answer is recorded"
        assert _metric(client, "whyrec_explanation_fallbacks_total", reason="llm_unavailable") == 2


# ---- the database ----


def _take_away(folder, store):
    """Make the database folder unusable, as when its volume is unmounted: the folder moves aside
    and a plain file sits at its path, so SQLite can neither open nor create the database. The
    store's pooled connections are dropped first (a database server going down drops them too;
    an open SQLite file would otherwise stay readable through them)."""
    store.engine.dispose()
    folder.rename(folder.with_name("away"))
    folder.write_text("not a directory")


def _bring_back(folder):
    folder.unlink()
    folder.with_name("away").rename(folder)


def _count(url, table):
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one()
    finally:
        engine.dispose()


def test_with_the_database_unavailable_slates_are_served_writes_queued_and_all_written_when_it_returns(fake_llm, slice_settings, slice_catalog, slice_retriever, slice_ranker, slice_recommender, tmp_path):
    from whyrec.service.store import Store

    fake_llm.mode = "noise"  # instant answers: the explanations are not what this test is about
    folder = tmp_path / "db"
    url = f"sqlite:///{folder / 'whyrec.sqlite3'}"
    settings = _settings(slice_settings, tmp_path, database_url=url, llm_url=fake_llm.url, llm_model="fake")
    store = Store(url, tmp_path / "spool.jsonl", retry_s=0.2)
    user = slice_catalog.users[23]
    refused = slice_recommender.rank(user, 1).items[0].item_id
    with _client(settings, slice_catalog, slice_retriever, slice_ranker, store) as client:
        before = client.get(f"/api/shoppers/{user}/recommendations", params={"k": 2}).json()  # written at once
        _take_away(folder, store)

        during = client.get(f"/api/shoppers/{user}/recommendations", params={"k": 2})
        assert during.status_code == 200, during.text
        assert refused in [i["item_id"] for i in during.json()["items"]]
        # Feedback on the slate written before the outage (which cannot be looked up now) and on the queued one.
        helpful = client.post(f"/api/shoppers/{user}/feedback", json={"kind": "helpful", "item_id": refused, "impression_id": before["impression_id"]})
        not_helpful = client.post(f"/api/shoppers/{user}/feedback", json={"kind": "not_helpful", "item_id": refused, "impression_id": during.json()["impression_id"]})
        not_interested = client.post(f"/api/shoppers/{user}/feedback", json={"kind": "not_interested", "item_id": refused})
        event = client.post(f"/api/shoppers/{user}/events", json={"item_id": before["items"][1]["item_id"], "kind": "view"})
        for response in (helpful, not_helpful, not_interested, event):
            assert response.status_code == 202, response.text
            assert response.json()["queued"] is True

        # Queued feedback already counts: the refused item is not shown again.
        after = client.get(f"/api/shoppers/{user}/recommendations", params={"k": 2})
        assert after.status_code == 200 and refused not in [i["item_id"] for i in after.json()["items"]]

        lookup = client.get("/api/impressions", params={"user_id": user}, auth=STAFF)
        assert lookup.status_code == 503
        assert "database" in lookup.json()["detail"] and str(folder) in lookup.json()["detail"]
        health = client.get("/api/health").json()
        assert health["status"] == "degraded" and health["database"].startswith("error") and health["queued_writes"] == 6
        assert _metric(client, "whyrec_queued_writes") == 6

        _bring_back(folder)
        deadline = time.monotonic() + 30
        while store.queued and time.monotonic() < deadline:
            time.sleep(0.2)
        assert store.queued == 0 and store.rejected == 0
        assert (_count(url, "impressions"), _count(url, "feedback"), _count(url, "events")) == (3, 3, 1)
        assert client.get(f"/api/impressions/{during.json()['impression_id']}", auth=STAFF).status_code == 200
        assert client.get("/api/health").json()["status"] == "ok"
    store.close()


def test_writes_queued_while_the_database_is_unavailable_survive_a_restart(tmp_path):
    from whyrec.core.catalog import EventKind
    from whyrec.service.store import Store

    folder = tmp_path / "db"
    url = f"sqlite:///{folder / 'whyrec.sqlite3'}"
    spool = tmp_path / "spool.jsonl"
    before = Store(url, spool, retry_s=60)
    _take_away(folder, before)
    queued = [before.add_event(f"shopper-{n}", "item-1", EventKind.PURCHASE) for n in range(3)]
    assert all(r.queued and r.event_id is None for r in queued)
    before.close()  # the process ends with the database still unavailable

    _bring_back(folder)
    after = Store(url, spool, retry_s=60)
    assert after.queued == 3
    assert after.flush() == 3
    assert _count(url, "events") == 3 and after.queued == 0 and spool.read_text() == ""
    after.close()


def test_two_processes_sharing_a_database_keep_separate_spools_and_a_later_start_writes_both(tmp_path):
    from whyrec.core.catalog import EventKind
    from whyrec.service.store import Store

    folder = tmp_path / "db"
    url = f"sqlite:///{folder / 'whyrec.sqlite3'}"
    spool = tmp_path / "spool.jsonl"
    # Two replicas configured alike (same database, same spool setting); flock is per open file, so
    # two stores in one process stand in for two processes.
    first, second = Store(url, spool, retry_s=60), Store(url, spool, retry_s=60)
    _take_away(folder, first)
    second.engine.dispose()
    first.add_event("shopper-a", "item-1", EventKind.VIEW)
    second.add_event("shopper-b", "item-2", EventKind.VIEW)
    first.close()
    second.close()

    _bring_back(folder)
    later = Store(url, spool, retry_s=60)
    assert later.queued == 2 and later.flush() == 2
    assert _count(url, "events") == 2
    later.close()


# ---- damaged model files ----


@pytest.fixture()
def cache_copy(slice_settings, slice_catalog, slice_training, tmp_path):
    """The slice's trained models and embeddings, copied so that a test can damage them."""
    from whyrec.pipeline import cache_folder

    data = slice_settings.cache_dir / "data"
    copy = tmp_path / "cache"
    shutil.copytree(data, copy / "data", ignore=shutil.ignore_patterns("*.tmp", ".*"))
    settings = slice_settings.model_copy(update={"cache_dir": copy})
    assert cache_folder(settings, slice_catalog).exists()
    return settings


def _truncate(path):
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 3)])


def _embeddings_file(settings):
    return next((settings.cache_dir / "data").glob("*-items-*/embeddings-*.npy"))


def _load_error(settings, catalog):
    from whyrec.core.errors import ConfigError
    from whyrec.pipeline import load_models

    with pytest.raises(ConfigError) as error:
        load_models(settings, catalog, log=lambda m: None)
    return str(error.value)


def test_a_truncated_item_index_file_is_a_startup_error_naming_it_and_how_to_rebuild_it(cache_copy, slice_catalog):
    damaged = _embeddings_file(cache_copy)
    _truncate(damaged)
    message = _load_error(cache_copy, slice_catalog)
    assert str(damaged) in message and f"rm {damaged}" in message


@pytest.mark.parametrize("damage", ["truncated", "deleted"])
def test_a_damaged_ranker_checkpoint_is_a_startup_error_naming_the_file_and_the_train_command(damage, cache_copy, slice_catalog, office_slice):
    from whyrec.pipeline import ranker_folder

    weights = ranker_folder(cache_copy, slice_catalog) / "model.safetensors"
    _truncate(weights) if damage == "truncated" else weights.unlink()
    message = _load_error(cache_copy, slice_catalog)
    assert str(weights) in message and f"whyrec train --data {office_slice}" in message


def test_a_corrupt_sequence_model_checkpoint_is_a_startup_error_naming_the_file_and_the_train_command(cache_copy, slice_catalog, office_slice):
    from whyrec.pipeline import sequence_folder

    folder = sequence_folder(cache_copy, slice_catalog)
    checkpoint = next(p for p in folder.iterdir() if p.suffix in (".pt", ".pth"))
    _truncate(checkpoint)
    message = _load_error(cache_copy, slice_catalog)
    assert str(checkpoint) in message and f"whyrec train --data {office_slice}" in message


def test_the_cli_reports_a_damaged_checkpoint_in_one_line_without_a_traceback(cache_copy, slice_catalog, office_slice):
    from whyrec.pipeline import ranker_folder

    weights = ranker_folder(cache_copy, slice_catalog) / "model.safetensors"
    _truncate(weights)
    env = {**os.environ, "WHYREC_CACHE_DIR": str(cache_copy.cache_dir), "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run(
        [sys.executable, "-m", "whyrec.cli", "recommend", "--data", str(office_slice), "--user", slice_catalog.users[0], "-k", "1"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert re.search(r"^error: .*" + re.escape(str(weights)) + r".*whyrec train --data", done.stderr, re.MULTILINE), done.stderr
