"""Durability and concurrency of the store: many writers at once lose nothing (on SQLite and on a
real PostgreSQL server), and a writer killed mid-transaction leaves no partial impression."""

import random
import signal
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy
from fastapi.testclient import TestClient

from whyrec.core.catalog import EventKind
from whyrec.service.store import Store

pytestmark = pytest.mark.integration

# A process that writes to the store through whyrec.service.store, as a second API process would.
# argv: database URL, writer name, rounds, items per impression[, round to stop in]. Prints one line
# per committed round. With a round to stop in, it prints "inside" once that round's impression row is
# written and its items are about to be, and waits there, inside the open transaction, to be killed:
# a hook so that the SIGKILL lands mid-write every time, not by luck of timing.
WRITER = r"""
import sys
import time
from sqlalchemy import event
from whyrec.core.catalog import EventKind
from whyrec.core.schema import Explanation, ExplanationSource, Fact, FactKind, FactTable, RankedItem, RecommendedItem
from whyrec.service.store import FeedbackKind, Store

url, name, rounds, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
store = Store(url)

def item(position):
    item_id = f"{name}-item-{position}"
    table = FactTable(name, item_id, tuple(Fact(f"F{i}", FactKind.ITEM_TITLE, "x" * 200, "x") for i in range(1, 6)))
    explanation = Explanation("A note.", ExplanationSource.TEMPLATE, False, table.facts[:1], "shopper.v2", "writer")
    return RecommendedItem(item_id, "title", RankedItem(item_id, position, 0.5, 0.5, candidates_scored=size), explanation, table)

items = [item(p) for p in range(1, size + 1)]
prompts = [[("human", "Facts: " + "y" * 500)] for _ in items]
current = -1
if len(sys.argv) > 5:
    stop_in = int(sys.argv[5])

    @event.listens_for(store.engine, "before_cursor_execute")
    def _stop(connection, cursor, statement, parameters, context, executemany):
        if current == stop_in and statement.startswith("INSERT INTO impression_items"):
            print("inside", flush=True)
            time.sleep(120)

for n in range(rounds):
    current = n
    shown = store.log_impression(name, "slate", ["h1", "h2"], items, prompts, ())
    store.add_event(name, f"{name}-item-{n}", EventKind.VIEW)
    store.add_feedback(name, FeedbackKind.HELPFUL, items[0].item_id, shown.impression_id)  # reads, then writes
    print(n, flush=True)
"""


TABLES = ("impressions", "impression_items", "events", "feedback")


def _counts(url: str) -> dict[str, int]:
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as db:
            return {t: db.execute(sqlalchemy.text(f"SELECT COUNT(*) FROM {t}")).scalar_one() for t in TABLES}
    finally:
        engine.dispose()


def _writer(url: str, name: str, rounds: int, size: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, url, name, str(rounds), str(size)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    return request.getfixturevalue("postgres_url")


def test_writers_in_separate_processes_on_one_database_lose_nothing(shared_url):
    Store(shared_url)  # the schema exists before the writers race to create it
    before = _counts(shared_url)
    processes, rounds, size = 6, 40, 5
    writers = [_writer(shared_url, f"p{i}-{time.time_ns()}", rounds, size) for i in range(processes)]
    for writer in writers:
        out, err = writer.communicate(timeout=240)
        assert writer.returncode == 0, err[-2000:]
        assert len(out.split()) == rounds
    added = {t: n - before[t] for t, n in _counts(shared_url).items()}
    assert added == {"impressions": processes * rounds, "impression_items": processes * rounds * size, "events": processes * rounds, "feedback": processes * rounds}


def test_a_writer_killed_mid_transaction_leaves_no_partial_impression(tmp_path):
    path = tmp_path / "crash.sqlite3"
    url = f"sqlite:///{path}"
    Store(url)
    size, committed = 50, 3
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, url, "crash", "10", str(size), str(committed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    lines = [writer.stdout.readline().strip() for _ in range(committed + 1)]
    assert lines == [*map(str, range(committed)), "inside"], writer.stderr.read()[-2000:] if writer.poll() is not None else lines
    writer.send_signal(signal.SIGKILL)  # its impression row is written, its items are not, nothing is committed
    writer.wait(timeout=30)
    reopened = Store(url)  # recovery from the WAL happens on open
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        sizes = [n for (n,) in db.execute("SELECT COUNT(i.id) FROM impressions m LEFT JOIN impression_items i ON i.impression_id = m.id GROUP BY m.id")]
    assert sizes == [size] * committed, "an impression row without all of its items, or a committed one lost"
    for record in reopened.impressions(user_id="crash", limit=500):
        assert [i.position for i in record.items] == list(range(1, size + 1))
    reopened.add_event("crash", "after", EventKind.VIEW)  # still writable


@pytest.fixture(scope="module")
def client(slice_settings, slice_catalog, slice_retriever, slice_ranker, tmp_path_factory):
    from whyrec.pipeline import Recommender, build_explainer
    from whyrec.service.api import create_app
    from whyrec.service.service import WhyrecService
    from whyrec.service.telemetry import ServiceMetrics

    path = tmp_path_factory.mktemp("concurrent-store") / "whyrec.sqlite3"
    # Short answers: what is under test is where the records go, not the text.
    settings = slice_settings.model_copy(update={"database_url": f"sqlite:///{path}", "rate_limit_per_minute": 0, "max_new_tokens": 8})
    recommender = Recommender(settings, slice_catalog, slice_retriever, slice_ranker, build_explainer(settings))
    with TestClient(create_app(WhyrecService(recommender, Store(settings.database_url), ServiceMetrics()), settings)) as client:
        yield client, settings.database_url


def test_concurrent_events_feedback_and_slates_through_the_app_lose_nothing(client, slice_catalog):
    client, url = client
    before = _counts(url)
    users = slice_catalog.users[50:58]
    items = list(slice_catalog.items)

    def event(n):
        return client.post(f"/api/shoppers/{users[n % len(users)]}/events", json={"item_id": items[n % len(items)], "kind": "view"}).status_code

    def feedback(n):
        user = users[n % len(users)]
        return client.post(f"/api/shoppers/{user}/feedback", json={"kind": "not_interested", "item_id": items[(n * 7) % len(items)]}).status_code

    def slate(n):
        return client.get(f"/api/shoppers/{users[n % len(users)]}/recommendations", params={"k": 1}).status_code

    calls = [(event, n) for n in range(240)] + [(feedback, n) for n in range(120)] + [(slate, n) for n in range(4)]
    random.Random(0).shuffle(calls)  # slates' transactions among the event and feedback writes
    with ThreadPoolExecutor(24) as pool:
        codes = list(pool.map(lambda call: (call[0].__name__, call[0](call[1])), calls))
    assert [c for c in codes if c[1] not in (200, 201)] == []
    after = _counts(url)
    assert after["events"] - before["events"] == 240
    assert after["feedback"] - before["feedback"] == 120
    assert after["impressions"] - before["impressions"] == 4
    assert after["impression_items"] - before["impression_items"] == 4
