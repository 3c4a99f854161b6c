"""Live catalog changes through the staff API and `whyrec catalog`, on the trained 80-shopper Office
slice: an added item is a candidate at once, a removed one is never shown or explained, each change
is recorded in the service's database, replayed by a service started later and picked up by a
running one; nothing is retrained. The module ranks on its own item index, so its changes stay here."""

import socket
import subprocess
import sys
import time

import pytest
from fastapi.testclient import TestClient

from whyrec.service.passwords import hash_password

pytestmark = pytest.mark.integration
ADMIN = ("admin", "admin pass")  # the single WHYREC_STAFF_USER account: every role, catalog included
SUPPORT = ("sam", "support pass")  # support only
POLL_S = 0.2  # how often the services look for changes recorded elsewhere (2 s when served)
# Until the next `whyrec train` only the text source knows a new item (co-occurrence and the
# sequence model are neutral about it), so on this slice a near copy of a shopper's last item ranks
# about 25th to 35th among their candidates: the slates that look for one are this long.
LONG_K = 40


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def settings(slice_settings, tmp_path_factory):
    accounts = tmp_path_factory.mktemp("catalog-accounts") / "staff-accounts"
    accounts.write_text(f"{SUPPORT[0]}:support:{hash_password(SUPPORT[1], iterations=1_000)}\n")
    return slice_settings.model_copy(update={
        # The changes to the slate are under test, not the wording: the generator's server is down
        # (nothing listens on the port), so every explanation is the template fallback at once.
        "llm_url": f"http://127.0.0.1:{_closed_port()}/v1",
        "llm_model": "smollm2-135m-instruct",
        "llm_timeout_s": 2.0,
        "llm_concurrency": 50,
        "database_url": f"sqlite:///{tmp_path_factory.mktemp('catalog-store') / 'whyrec.sqlite3'}",
        "staff_user": ADMIN[0],
        "staff_password_hash": hash_password(ADMIN[1], iterations=1_000),
        "staff_accounts": accounts,
    })


def _service(settings, catalog, ranker):
    """A service on its own item index (the session's retriever stays as trained); the ranker is only read."""
    from whyrec.pipeline import Recommender, build_explainer, build_retriever, embedding_retriever
    from whyrec.service.service import WhyrecService
    from whyrec.service.store import Store
    from whyrec.service.telemetry import ServiceMetrics

    retriever = build_retriever(settings, catalog, embedding_retriever(settings, catalog))
    recommender = Recommender(settings, catalog, retriever, ranker, build_explainer(settings))
    return WhyrecService(recommender, Store(settings.database_url), ServiceMetrics(), catalog_poll_s=POLL_S)


@pytest.fixture(scope="module")
def served(settings, slice_catalog, slice_ranker):
    from whyrec.service.api import create_app

    service = _service(settings, slice_catalog, slice_ranker)
    with TestClient(create_app(service, settings)) as client:
        yield client, service
    service.close()


def _slate(client, user, k):
    response = client.get(f"/api/shoppers/{user}/recommendations", params={"k": k})
    assert response.status_code == 200, response.text
    return [i["item_id"] for i in response.json()["items"]]


def _near_copy(catalog, item_id, new_id):
    """A new item that reads like `item_id`: its title with a new ending, its brand, categories and description."""
    item = catalog.items[item_id]
    return {"item_id": new_id, "title": f"{item.title} (new edition)", "brand": item.brand, "categories": list(item.categories),
            "description": item.description, "price": 12.5}


def test_an_added_item_that_reads_like_the_shoppers_last_item_is_in_their_next_slate(served, slice_catalog):
    client, service = served
    user = slice_catalog.users[20]
    last = slice_catalog.sequence(user)[-1]
    assert "live-new-1" not in _slate(client, user, LONG_K)

    response = client.post("/api/catalog/items", json=_near_copy(slice_catalog, last, "live-new-1"), auth=ADMIN)

    assert response.status_code == 201, response.text
    change = response.json()
    assert (change["action"], change["item_id"], change["staff_user"]) == ("add", "live-new-1", ADMIN[0])
    assert change["item"]["title"].endswith("(new edition)") and change["item"]["price"] == 12.5
    assert "live-new-1" in [c.item_id for c in service.recommender.retriever.candidates(slice_catalog.sequence(user), LONG_K)]
    slate = _slate(client, user, LONG_K)
    assert "live-new-1" in slate, slate
    explained = client.get(f"/api/shoppers/{user}/items/live-new-1/explanation")
    assert explained.status_code == 200 and explained.json()["item"]["title"].endswith("(new edition)")


def test_a_removed_item_leaves_the_next_slate_and_explaining_it_says_it_was_removed(served, slice_catalog):
    client, service = served
    user = slice_catalog.users[21]
    gone = _slate(client, user, 5)[0]

    response = client.delete(f"/api/catalog/items/{gone}", auth=ADMIN)

    assert response.status_code == 200, response.text
    assert (response.json()["action"], response.json()["item_id"], response.json()["item"]) == ("remove", gone, None)
    assert gone not in _slate(client, user, 5)
    assert gone not in _slate(client, user, LONG_K)
    # No candidate source proposes it for anyone: text, co-occurrence and sequence model alike.
    for shopper in slice_catalog.users:
        history = slice_catalog.sequence(shopper)
        assert gone not in [c.item_id for c in service.recommender.retriever.candidates(history, 50)]
    explained = client.get(f"/api/shoppers/{user}/items/{gone}/explanation")
    assert explained.status_code == 404 and explained.json()["detail"] == f"item '{gone}' was removed from the catalog"
    why_not = client.get(f"/api/shoppers/{user}/items/{gone}/why-not", auth=ADMIN)
    assert why_not.status_code == 404 and "was removed from the catalog" in why_not.json()["detail"]


def test_a_removed_item_can_be_added_back(served, slice_catalog):
    client, service = served
    user = slice_catalog.users[22]
    item_id = _slate(client, user, 3)[0]
    assert client.delete(f"/api/catalog/items/{item_id}", auth=ADMIN).status_code == 200
    assert client.delete(f"/api/catalog/items/{item_id}", auth=ADMIN).status_code == 404  # removed already

    back = client.post("/api/catalog/items", json=_near_copy(slice_catalog, item_id, item_id), auth=ADMIN)

    assert back.status_code == 201, back.text
    assert service.recommender.listed(item_id)
    assert client.get(f"/api/shoppers/{user}/items/{item_id}/explanation").status_code == 200


def test_only_catalog_staff_may_change_the_catalog(served, slice_catalog):
    client, service = served
    item_id = slice_catalog.sequence(slice_catalog.users[23])[0]
    new = {"item_id": "live-never", "title": "Never added"}
    for request in ({"method": "POST", "url": "/api/catalog/items", "json": new}, {"method": "DELETE", "url": f"/api/catalog/items/{item_id}"}):
        anonymous = client.request(**request)
        assert anonymous.status_code == 401 and "WWW-Authenticate" in anonymous.headers
        support = client.request(**request, auth=SUPPORT)
        assert support.status_code == 403 and "'catalog' role" in support.json()["detail"]
    assert not service.recommender.listed("live-never") and service.recommender.listed(item_id)


def test_adding_a_listed_id_is_409_removing_an_unknown_one_404_and_bad_input_one_line_422(served, slice_catalog):
    client, _ = served
    listed = slice_catalog.sequence(slice_catalog.users[24])[0]

    taken = client.post("/api/catalog/items", json={"item_id": listed, "title": "A second item under this id"}, auth=ADMIN)
    unknown = client.delete("/api/catalog/items/no-such-item", auth=ADMIN)
    bad = client.post("/api/catalog/items", json={"item_id": "live-bad", "title": " ", "price": -3, "colour": "red"}, auth=ADMIN)

    assert taken.status_code == 409 and taken.json()["detail"] == f"item '{listed}' is already in the catalog"
    assert unknown.status_code == 404 and "unknown item 'no-such-item'" in unknown.json()["detail"]
    assert bad.status_code == 422
    detail = bad.json()["detail"]
    assert "\n" not in detail and all(f"body.{field}" in detail for field in ("title", "price", "colour")), detail


def test_the_changes_are_recorded_and_a_service_started_later_replays_them(served, settings, slice_catalog, slice_ranker):
    from whyrec.core.protocol import CatalogAction
    from whyrec.service.api import create_app
    from whyrec.service.catalog_changes import CatalogChangeLog

    client, service = served
    user = slice_catalog.users[25]
    last = slice_catalog.sequence(user)[-1]
    gone = _slate(client, user, 5)[0]
    assert client.post("/api/catalog/items", json=_near_copy(slice_catalog, last, "live-replayed"), auth=ADMIN).status_code == 201
    assert client.delete(f"/api/catalog/items/{gone}", auth=ADMIN).status_code == 200

    recorded = CatalogChangeLog(service.store.engine).changes()
    assert [(c.action, c.item_id, c.staff_user) for c in recorded[-2:]] == [(CatalogAction.ADD, "live-replayed", ADMIN[0]), (CatalogAction.REMOVE, gone, ADMIN[0])]
    assert recorded[-2].item.title.endswith("(new edition)") and recorded[-2].item.categories == list(slice_catalog.items[last].categories)

    restarted = _service(settings, slice_catalog, slice_ranker)  # the same database, a fresh index from the trained models
    try:
        with TestClient(create_app(restarted, settings)) as fresh:
            assert restarted.recommender.listed("live-replayed") and not restarted.recommender.listed(gone)
            slate = _slate(fresh, user, LONG_K)
            assert "live-replayed" in slate and gone not in slate
            assert 400 <= fresh.get(f"/api/shoppers/{user}/items/{gone}/explanation").status_code < 500
    finally:
        restarted.close()


def test_whyrec_catalog_remove_is_recorded_and_a_running_service_applies_it_on_its_next_request(served, settings, slice_catalog, office_slice):
    client, service = served
    user = slice_catalog.users[26]
    gone = _slate(client, user, 5)[0]

    done = subprocess.run(
        [sys.executable, "-m", "whyrec.cli", "catalog", "remove", gone, "--data", str(office_slice), "--database-url", settings.database_url],
        capture_output=True, text=True, timeout=300,
    )

    assert done.returncode == 0, done.stderr
    assert f"remove item '{gone}'" in done.stdout and "recorded change" in done.stdout
    assert service.recommender.listed(gone)  # not yet looked at: the service applies changes on requests
    time.sleep(POLL_S * 1.5)
    assert gone not in _slate(client, user, 5)
    assert not service.recommender.listed(gone)
    again = subprocess.run(
        [sys.executable, "-m", "whyrec.cli", "catalog", "remove", gone, "--data", str(office_slice), "--database-url", settings.database_url],
        capture_output=True, text=True, timeout=300,
    )
    assert again.returncode == 1 and again.stderr.strip() == f"error: item '{gone}' was removed from the catalog"
