"""Several API replicas on one PostgreSQL database (WHYREC_JOB_QUEUE=postgres): their background
explainer's jobs go to procrastinate's queue in that database and a `whyrec worker` process runs
them. One job per shopper across the replicas, a newer history replaces the waiting job, a stale
job is dropped, a dead worker's job does not block its shopper, and every explanation is generated
once, by the worker, for pages on either replica."""

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field

import pytest
import sqlalchemy

from whyrec.core.catalog import EventKind
from whyrec.core.config import Settings
from whyrec.core.errors import ConfigError
from whyrec.explainer.cache import cache_key
from whyrec.service.jobqueue import TASK, JobQueue, SlateJob
from whyrec.service.store import FeedbackKind, Store

pytestmark = pytest.mark.integration


def test_the_postgres_job_queue_refuses_a_database_that_is_not_postgresql(tmp_path):
    url = f"sqlite:///{tmp_path / 'one.sqlite3'}"
    with pytest.raises(ConfigError, match="WHYREC_DATABASE_URL"):
        Settings(job_queue="postgres", database_url=url)
    worker = subprocess.run([sys.executable, "-m", "whyrec.cli", "worker", "--database-url", url], capture_output=True, text=True, timeout=120)
    assert worker.returncode == 1
    assert worker.stderr.startswith("error: WHYREC_JOB_QUEUE=postgres (and `whyrec worker`)") and "Traceback" not in worker.stderr


def _create_database(server_url: str, name: str) -> str:
    engine = sqlalchemy.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as db:
        db.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()
    return f"{server_url.rsplit('/', 1)[0]}/{name}"


@dataclass
class Cluster:
    url: str
    replicas: tuple  # two WhyrecService, each with its own engine, store and generator
    shoppers: dict[str, str]  # role in the scenario -> shopper id
    before: dict = field(default_factory=dict)  # observed while no worker ran
    after: dict = field(default_factory=dict)  # observed once the worker had emptied the queue
    worker_log: str = ""


def _jobs(url: str) -> dict[str, list[str]]:
    """Each shopper's explain jobs' statuses, oldest first."""
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as db:
            rows = db.execute(sqlalchemy.text("SELECT args->>'user_id', status FROM procrastinate_jobs WHERE task_name = :task ORDER BY id"), {"task": TASK})
            found: dict[str, list[str]] = {}
            for user, status in rows:
                found.setdefault(user, []).append(status)
            return found
    finally:
        engine.dispose()


def _sql(url: str, statement: str, **values):
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.begin() as db:
            result = db.execute(sqlalchemy.text(statement), values)
            return result.all() if result.returns_rows else None
    finally:
        engine.dispose()


def _keys(service, items) -> set[str]:
    explainer = service.recommender.explainer
    return {cache_key(i.fact_table, explainer.template.label, explainer.model_key) for i in items}


@pytest.fixture(scope="module")
def cluster(postgres_url, slice_settings, slice_catalog, slice_retriever, slice_ranker, office_slice, cache_dir, tmp_path_factory):
    from whyrec.pipeline import Recommender, build_explainer
    from whyrec.service.service import WhyrecService
    from whyrec.service.telemetry import ServiceMetrics

    url = _create_database(postgres_url, "whyrec_job_queue")
    settings = slice_settings.model_copy(update={
        "page_waits_for_model": False, "max_new_tokens": 60, "shop_k": 2, "database_url": url, "job_queue": "postgres",
    })

    def replica():
        recommender = Recommender(settings, slice_catalog, slice_retriever, slice_ranker, build_explainer(settings))
        return WhyrecService(recommender, Store(url), ServiceMetrics())

    a, b = replica(), replica()
    users = slice_catalog.users
    roles = {"both": users[10], "replaced": users[11], "stale": users[12], "dead": users[13]}
    run = Cluster(url, (a, b), roles)
    unseen = lambda user: next(i for i in slice_catalog.items if i not in slice_catalog.sequence(user))  # noqa: E731

    # No worker runs yet: what the replicas queue waits.
    a.recommend(roles["both"], 2)
    b.recommend(roles["both"], 2)  # the same page on the other replica
    a.recommend(roles["replaced"], 2)
    b.record_event(roles["replaced"], unseen(roles["replaced"]), EventKind.VIEW)  # queues the next slate, for the new history
    stale_page = b.recommend(roles["stale"], 2)
    a.record_feedback(roles["stale"], FeedbackKind.NOT_INTERESTED, stale_page.items[0].item_id)  # changes the history, queues nothing
    # A worker killed while running a job leaves it 'doing' under the shopper's lock, with a heartbeat that stopped.
    a.recommend(roles["dead"], 2)
    (dead_worker,) = _sql(url, "INSERT INTO procrastinate_workers (last_heartbeat) VALUES (now() - interval '1 hour') RETURNING id")
    _sql(url, "UPDATE procrastinate_jobs SET status = 'doing', worker_id = :worker WHERE queueing_lock = :lock", worker=dead_worker[0], lock=f"shopper:{roles['dead']}")
    b.record_event(roles["dead"], unseen(roles["dead"]), EventKind.VIEW)
    time.sleep(0.2)  # some lag to see
    full = JobQueue(url, max_queued=4)
    run.before = {
        "jobs": _jobs(url), "depth": [r.background.depth for r in (a, b)], "lag_s": [r.background.lag_s for r in (a, b)],
        "metrics": b.metrics.render().decode(), "stale_keys": _keys(b, stale_page.items),
        "full_queue_takes_a_new_shopper": full.submit(SlateJob(user_id=users[14], state="any", k=2)), "full_queue_refused": full.stats.refused,
    }
    full.close()

    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    env = {
        **os.environ, "WHYREC_DATA": str(office_slice), "WHYREC_CACHE_DIR": str(cache_dir), "WHYREC_AUTO_TRAIN": "false",
        "WHYREC_MAX_NEW_TOKENS": "60", "OMP_WAIT_POLICY": "PASSIVE",
    }
    with log_path.open("w") as log:
        worker = subprocess.Popen([sys.executable, "-m", "whyrec.cli", "worker", "--database-url", url], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 600
        while any(s in ("todo", "doing") for statuses in _jobs(url).values() for s in statuses):
            assert worker.poll() is None, "whyrec worker stopped:\n" + log_path.read_text()[-3000:]
            assert time.time() < deadline, "the worker did not empty the queue in time:\n" + log_path.read_text()[-3000:]
            time.sleep(1)
    finally:
        worker.terminate()
        worker.wait(timeout=120)
    run.worker_log = log_path.read_text()
    assert worker.returncode == 0, run.worker_log[-3000:]  # SIGTERM: the worker stops cleanly

    # Each shopper's next page, from the replica that did not queue their job.
    pages = {role: (b if role in ("both", "replaced") else a).recommend(user, 2) for role, user in roles.items() if role != "stale"}
    stored = {key for (key,) in _sql(url, "SELECT key FROM explanations")}
    run.after = {
        "jobs": _jobs(url), "depth": [r.background.depth for r in (a, b)], "stats": a.background.stats, "pages": pages, "stored": stored,
        "page_keys": set().union(*(_keys(a, p.items) for p in pages.values())), "replica_generations": [r.recommender.explainer.chat_model.generations for r in (a, b)],
    }
    yield run
    for service in (a, b):
        service.close()


def test_a_shopper_served_by_both_replicas_gets_one_job(cluster):
    both = cluster.shoppers["both"]
    assert cluster.before["jobs"][both] == ["todo"]
    assert cluster.after["jobs"][both] == ["succeeded"]


def test_a_newer_history_replaces_the_shoppers_waiting_job(cluster):
    replaced = cluster.shoppers["replaced"]
    assert cluster.before["jobs"][replaced] == ["cancelled", "todo"]
    assert cluster.after["jobs"][replaced] == ["cancelled", "succeeded"]


def test_a_job_whose_shoppers_history_changed_since_is_dropped_as_stale(cluster):
    stale = cluster.shoppers["stale"]
    assert cluster.before["jobs"][stale] == ["todo"]
    assert cluster.after["jobs"][stale] == ["aborted"]
    assert f"shopper {stale!r}: stale" in cluster.worker_log
    assert not (cluster.before["stale_keys"] - cluster.after["page_keys"]) & cluster.after["stored"], "the stale slate was explained"


def test_a_job_left_running_by_a_dead_worker_ends_failed_and_no_longer_blocks_its_shopper(cluster):
    dead = cluster.shoppers["dead"]
    assert cluster.before["jobs"][dead] == ["doing", "todo"]
    assert cluster.after["jobs"][dead] == ["failed", "succeeded"]


def test_every_replica_reports_the_whole_queue_and_a_full_queue_refuses(cluster):
    assert cluster.before["depth"] == [4, 4]  # both, replaced (the new one), stale, dead (the new one)
    assert all(lag > 0.1 for lag in cluster.before["lag_s"])
    assert "whyrec_background_queue_depth 4.0" in cluster.before["metrics"]
    assert "whyrec_background_running 1.0" in cluster.before["metrics"]  # the job a dead worker left doing
    assert cluster.before["full_queue_takes_a_new_shopper"] is False and cluster.before["full_queue_refused"] == 1
    assert cluster.after["depth"] == [0, 0]
    stats = cluster.after["stats"]
    assert (stats.done, stats.stale, stats.failed) == (3, 2, 1)


def test_one_worker_generates_each_explanation_once_for_pages_on_either_replica(cluster):
    generated = sum(int(n) for n in re.findall(r": (\d+) explanations generated", cluster.worker_log))
    assert cluster.after["stored"] == cluster.after["page_keys"]  # every next page's text is stored, and nothing else
    assert generated == len(cluster.after["stored"]), "a fact table was generated more than once"
    assert cluster.after["replica_generations"] == [0, 0]  # the replicas only read the texts
    for role, page in cluster.after["pages"].items():
        assert not any(i.explanation.pending for i in page.items), role
