"""One wire contract: the CLI's --json and the API print the same JSON for the same item, and the
impression log keeps what the wire item says."""

import json
import os
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

pytestmark = pytest.mark.integration

# No generator answers at this address, so both sides show the checked template sentence: the
# comparison is of the shape and every field, not of two runs of a sampler.
DOWN_LLM = {"llm_url": "http://127.0.0.1:9/v1", "llm_model": "no-server-here"}


@pytest.fixture(scope="module")
def api(slice_settings, slice_catalog, slice_retriever, slice_ranker, tmp_path_factory):
    from whyrec.pipeline import Recommender, build_explainer
    from whyrec.service.api import create_app
    from whyrec.service.service import WhyrecService
    from whyrec.service.store import Store
    from whyrec.service.telemetry import ServiceMetrics

    settings = slice_settings.model_copy(update={**DOWN_LLM, "database_url": f"sqlite:///{tmp_path_factory.mktemp('protocol') / 'db.sqlite3'}"})
    recommender = Recommender(settings, slice_catalog, slice_retriever, slice_ranker, build_explainer(settings))
    with TestClient(create_app(WhyrecService(recommender, Store(settings.database_url), ServiceMetrics()), settings)) as client:
        yield client


def _cli(args, slice_settings):
    env = {
        **os.environ, "OMP_WAIT_POLICY": "PASSIVE", "WHYREC_CACHE_DIR": str(slice_settings.cache_dir),
        "WHYREC_LLM_URL": DOWN_LLM["llm_url"], "WHYREC_LLM_MODEL": DOWN_LLM["llm_model"],
    }
    done = subprocess.run([sys.executable, "-m", "whyrec.cli", *args, "--data", str(slice_settings.data), "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_whyrec_explain_json_is_the_apis_item_json_for_the_same_item(api, slice_settings, slice_catalog, slice_recommender):
    user = slice_catalog.users[1]
    item = slice_recommender.rank(user, 3).items[2].item_id
    from_cli = _cli(["explain", "--user", user, "--item", item], slice_settings)
    response = api.get(f"/api/shoppers/{user}/items/{item}/explanation", params={"k": 10})
    assert response.status_code == 200, response.text
    from_api = response.json()["item"]
    assert from_cli == from_api
    assert from_api["scores"]["features"] and from_api["explanation"]["fact_table"]  # a whole item, not two empty shapes


def test_whyrec_recommend_json_items_have_the_apis_item_shape(api, slice_settings, slice_catalog):
    user = slice_catalog.users[2]
    from_cli = _cli(["recommend", "--user", user, "-k", "2"], slice_settings)
    response = api.get(f"/api/shoppers/{user}/recommendations", params={"k": 2})
    assert response.status_code == 200, response.text
    from_api = response.json()
    assert from_cli["user_id"] == user
    assert [i["item_id"] for i in from_cli["items"]] == [i["item_id"] for i in from_api["items"]]
    assert [sorted(i) for i in from_cli["items"]] == [sorted(i) for i in from_api["items"]]
    assert [sorted(i["explanation"]) for i in from_cli["items"]] == [sorted(i["explanation"]) for i in from_api["items"]]


def test_the_impression_log_keeps_the_served_items_wire_fields(api, slice_catalog):
    from whyrec.core.protocol import ImpressionRecord

    user = slice_catalog.users[3]
    served = api.get(f"/api/shoppers/{user}/recommendations", params={"k": 2}).json()
    store = api.app.state.service.store
    record = store.impression(served["impression_id"])
    assert isinstance(record, ImpressionRecord)
    for item, logged in zip(served["items"], record.items):
        assert logged.item_id == item["item_id"] and logged.text == item["explanation"]["text"]
        assert logged.features == item["scores"]["features"]
        assert [f.model_dump() for f in logged.fact_table] == item["explanation"]["fact_table"]
        assert logged.cited_fact_ids == [f["id"] for f in item["explanation"]["facts"]]
        assert [a.model_dump() for a in logged.attributions] == item["attributions"]
