"""Pages that never wait for the model: stored texts at once, checked templates marked pending
otherwise, and a background explainer that writes the rest for the shopper's next view."""

import threading
import time

import pytest
from fastapi.testclient import TestClient

from whyrec.core.schema import fact_table_from_json
from whyrec.explainer import GenerationInterrupted, check_reason, stop_requested
from whyrec.service.background import BackgroundExplainer


def _explainer(state, explained, block=None, max_queued=8):
    def explain(tables):
        if block is not None:
            block.wait(10)
        explained.extend(tables)

    return BackgroundExplainer(explain, state, lambda tables: tables, max_queued)


def test_a_job_whose_shopper_changed_since_it_was_queued_is_dropped_as_stale():
    states, explained, block = {"u1": "a", "u2": "a"}, [], threading.Event()
    background = _explainer(lambda u: states[u], explained, block)
    background.submit("u2", lambda: ["busy"])  # holds the worker
    time.sleep(0.2)
    background.submit("u1", lambda: ["t1"])
    states["u1"] = "b"  # an event the service did not queue a job for
    block.set()
    assert background.wait_idle(10)
    assert explained == ["busy"] and background.stats.stale == 1


def test_one_job_per_shopper_the_newest_wins_and_a_full_queue_refuses_new_shoppers():
    explained, block = [], threading.Event()
    background = _explainer(lambda u: "s", explained, block, max_queued=2)
    background.submit("busy", lambda: ["busy"])
    time.sleep(0.2)
    assert background.submit("u1", lambda: ["old"]) and background.submit("u1", lambda: ["new"])
    assert background.depth == 1 and background.running == 1  # waiting, and the one being written
    assert background.submit("u2", lambda: ["u2"])
    assert not background.submit("u3", lambda: ["u3"]) and background.stats.refused == 1
    block.set()
    assert background.wait_idle(10)
    assert explained == ["busy", "new", "u2"] and background.running == 0


def test_a_shopper_on_the_page_waits_for_one_part_of_a_prewarm_job_not_for_the_whole_slate():
    explained, block, started = [], threading.Event(), threading.Event()

    def explain(tables):
        started.set()
        if tables[0] == "w1":
            block.wait(10)
        explained.extend(tables)

    background = BackgroundExplainer(explain, lambda u: "s", lambda tables: tables, 8, part=2)
    background.submit("warm", lambda: ["w1", "w2", "w3", "w4", "w5"])
    background.submit("later", lambda: ["l1"])
    assert started.wait(5)
    background.submit("live", lambda: ["p1", "p2", "p3"], first=True)
    block.set()
    assert background.wait_idle(10)
    # The live slate goes whole, right after the part being written; the rest of the pre-warm
    # job keeps its place ahead of the jobs queued after it.
    assert explained == ["w1", "w2", "p1", "p2", "p3", "w3", "w4", "w5", "l1"]
    assert background.stats.done == 3


def test_a_shopper_on_the_page_stops_a_prewarm_batch_mid_generation_and_the_batch_is_written_after():
    written, store, generating = [], set(), threading.Event()

    def explain(tables):
        # A generator that honours the stop between steps, as the in-process one does (its own
        # test is in test_explainer.py); the pre-warm batch would run for 10 s uninterrupted.
        for _ in range(100):
            if stop_requested():
                raise GenerationInterrupted("stopped")
            generating.set()
            time.sleep(0.1 if tables[0].startswith("w") else 0)
        written.append(list(tables))
        store.update(tables)

    background = BackgroundExplainer(explain, lambda u: "s", lambda tables: [t for t in tables if t not in store], 8)
    background.submit("warm", lambda: ["w1", "w2", "w3"])
    assert generating.wait(5)
    asked = time.monotonic()
    background.submit("live", lambda: ["p1", "p2"], first=True)
    while "p1" not in store:
        assert time.monotonic() - asked < 2, "the live slate waited for the pre-warm batch"
        time.sleep(0.01)
    assert background.wait_idle(30)
    assert written == [["p1", "p2"], ["w1", "w2", "w3"]]
    assert background.stats.interrupted == 1 and background.stats.done == 2


def test_background_generation_pauses_while_a_shoppers_page_is_being_ranked_and_then_goes_on():
    steps = []

    def explain(tables):
        for _ in range(30):
            stop_requested()  # the generator's check between decode steps: it waits while a page is made
            steps.append(None)
            time.sleep(0.01)

    background = BackgroundExplainer(explain, lambda u: "s", lambda tables: tables, 8)
    background.submit("warm", lambda: ["w1"])
    while len(steps) < 3:
        time.sleep(0.01)
    with background.live():
        paused_at = len(steps)
        time.sleep(0.5)
        assert len(steps) <= paused_at + 1  # at most the step already past its check
    assert background.wait_idle(10)
    assert len(steps) == 30 and background.stats.done == 1 and background.stats.interrupted == 0


@pytest.fixture(scope="module")
def shop(slice_settings, slice_catalog, slice_retriever, slice_ranker, tmp_path_factory):
    """The API as `whyrec serve` runs it by default: pages do not wait for the model."""
    from whyrec.pipeline import Recommender, build_explainer
    from whyrec.service.api import create_app
    from whyrec.service.service import WhyrecService
    from whyrec.service.store import Store
    from whyrec.service.telemetry import ServiceMetrics

    settings = slice_settings.model_copy(update={
        "page_waits_for_model": False, "max_new_tokens": 60, "shop_k": 2,  # the next slate an event queues
        "database_url": f"sqlite:///{tmp_path_factory.mktemp('background') / 'whyrec.sqlite3'}",
    })

    def start():
        recommender = Recommender(settings, slice_catalog, slice_retriever, slice_ranker, build_explainer(settings))
        service = WhyrecService(recommender, Store(settings.database_url), ServiceMetrics())
        return service, TestClient(create_app(service, settings))

    return start


def test_a_first_page_shows_checked_pending_templates_at_once_and_the_next_shows_the_stored_texts(shop, slice_catalog):
    service, client = shop()
    user = slice_catalog.users[3]
    first = client.get(f"/api/shoppers/{user}/recommendations", params={"k": 3}).json()["items"]
    assert all(i["explanation"]["pending"] and i["explanation"]["source"] == "template" for i in first)
    for item in first:
        table = fact_table_from_json(item, "item", user, item["item_id"])
        assert check_reason(item["explanation"]["text"], table).passed

    assert service.background.wait_idle(300)
    generated = service.recommender.explainer.chat_model.generations
    second = client.get(f"/api/shoppers/{user}/recommendations", params={"k": 3}).json()["items"]
    assert [i["item_id"] for i in second] == [i["item_id"] for i in first]
    assert not any(i["explanation"]["pending"] for i in second)
    assert service.recommender.explainer.chat_model.generations == generated  # nothing generated while the page waited
    for item in second:
        if item["explanation"]["source"] == "llm":
            assert check_reason(item["explanation"]["text"], fact_table_from_json(item, "item", user, item["item_id"])).passed
    metrics = client.get("/metrics").text
    assert 'whyrec_background_jobs{result="done"} 1.0' in metrics

    # A restarted service (nothing in memory) reads the same texts from the explanation store.
    restarted, again = shop()
    third = again.get(f"/api/shoppers/{user}/recommendations", params={"k": 3}).json()["items"]
    assert [i["explanation"]["text"] for i in third] == [i["explanation"]["text"] for i in second]
    assert restarted.recommender.explainer.cache.store_hits == 3
    assert "whyrec_explanation_hit_rate 1.0" in again.get("/metrics").text


def test_an_event_queues_the_shoppers_next_slate_for_the_background_explainer(shop, slice_catalog):
    service, client = shop()
    user = slice_catalog.users[5]
    item = next(i for i in slice_catalog.items if i not in slice_catalog.sequence(user))
    assert client.post(f"/api/shoppers/{user}/events", json={"item_id": item, "kind": "view"}).status_code in (200, 201)
    assert service.background.stats.queued == 1
    assert service.background.wait_idle(300) and service.background.stats.done == 1
    page = client.get(f"/api/shoppers/{user}/recommendations", params={"k": 2}).json()["items"]
    assert not any(i["explanation"]["pending"] for i in page)


def test_a_shopper_on_the_page_goes_before_the_pre_warmed_ones():
    explained, block = [], threading.Event()
    background = _explainer(lambda u: "s", explained, block)
    background.submit("busy", lambda: ["busy"])
    time.sleep(0.2)
    for user in ("warm1", "warm2"):
        background.submit(user, lambda user=user: [user])
    background.submit("visitor", lambda: ["visitor"], first=True)
    block.set()
    assert background.wait_idle(10)
    assert explained == ["busy", "visitor", "warm1", "warm2"]
