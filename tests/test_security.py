"""Security: staff roles on every protected route and view, per-client rate limiting of the shopper
endpoints, no shopper identifier or free text in what is sent to the LLM, loopback by default."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from starlette.routing import Mount

from whyrec.core.errors import ConfigError
from whyrec.service.accounts import Role, load_accounts, parse_accounts
from whyrec.service.passwords import hash_password
from whyrec.service.ratelimit import RateLimiter

pytestmark = pytest.mark.integration

ADMIN = ("admin", "admin pass")  # the single WHYREC_STAFF_USER account: every role
SUPPORT = ("sam", "support pass")
ENGINEER = ("pat", "engineer pass")
CATALOGUER = ("cat", "catalog pass")
ROLE_LOGIN = {Role.SUPPORT: SUPPORT, Role.PROMPT_ENGINEER: ENGINEER, Role.CATALOG: CATALOGUER}
OTHER_ROLE = {Role.SUPPORT: ENGINEER, Role.PROMPT_ENGINEER: SUPPORT, Role.CATALOG: SUPPORT}
MARKER = "jane.quuxley@example.com"  # a shopper id: must never reach the LLM
ASK = "a zorblat present for my desk, call me Jane Quuxley"  # a shopper's own words: nor must these
NEEDLES = ("jane", "quuxley", "example.com", "zorblat")  # none of them occurs in the slice's item texts


def _hash(password: str) -> str:
    return hash_password(password, iterations=1_000)


@pytest.fixture(scope="module")
def accounts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("accounts") / "staff-accounts"
    path.write_text(f"# user:roles:hash\n{SUPPORT[0]}:support:{_hash(SUPPORT[1])}\n\n{ENGINEER[0]}:prompt_engineer:{_hash(ENGINEER[1])}\n{CATALOGUER[0]}:catalog:{_hash(CATALOGUER[1])}\n")
    return path


@pytest.fixture(scope="module")
def served(slice_settings, slice_catalog, slice_retriever, slice_ranker, accounts_file, tmp_path_factory):
    """The whole served app (API and Gradio views, as `whyrec serve` builds it) with role accounts."""
    from whyrec.pipeline import Recommender, build_explainer
    from whyrec.server import build_server

    settings = slice_settings.model_copy(update={
        "max_new_tokens": 8,  # the answers' content does not matter here: only who may ask
        "database_url": f"sqlite:///{tmp_path_factory.mktemp('security-store') / 'whyrec.sqlite3'}",
        "staff_user": ADMIN[0],
        "staff_password_hash": _hash(ADMIN[1]),
        "staff_accounts": accounts_file,
        "prompts_dir": tmp_path_factory.mktemp("prompts"),
    })
    recommender = Recommender(settings, slice_catalog, slice_retriever, slice_ranker, build_explainer(settings))
    app = build_server(settings, recommender, log=lambda _: None)
    with TestClient(app) as client:
        user = slice_catalog.users[30]
        slate = client.get(f"/api/shoppers/{user}/recommendations", params={"k": 1}).json()
        yield app, client, {"user": user, "item": slate["items"][0]["item_id"], "impression": slate["impression_id"]}


# ---- every route is public on purpose, or protected by a role ----

PUBLIC = {
    ("GET", "/"), ("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/docs/oauth2-redirect"), ("GET", "/redoc"),
    ("GET", "/api/health"), ("GET", "/metrics"),
    ("GET", "/api/shoppers/{user_id}/recommendations"), ("GET", "/api/shoppers/{user_id}/recommendations/stream"),
    ("GET", "/api/shoppers/{user_id}/items/{item_id}/explanation"),
    ("POST", "/api/shoppers/{user_id}/events"), ("POST", "/api/shoppers/{user_id}/feedback"),
    ("MOUNT", "/shop"),
}
# (method, path) -> the role it needs and the request a holder of that role makes.
PROTECTED = {
    ("GET", "/api/impressions"): (Role.SUPPORT, lambda s: {"url": "/api/impressions", "params": {"user_id": s["user"]}}),
    ("GET", "/api/impressions/{impression_id}"): (Role.SUPPORT, lambda s: {"url": f"/api/impressions/{s['impression']}"}),
    ("GET", "/api/shoppers/{user_id}/items/{item_id}/why-not"): (Role.SUPPORT, lambda s: {"url": f"/api/shoppers/{s['user']}/items/{s['item']}/why-not"}),
    ("GET", "/api/prompts"): (Role.PROMPT_ENGINEER, lambda s: {"url": "/api/prompts"}),
    # A template the lab refuses (422) before running anything: past the login check, and cheap (the
    # full comparison runs in the Prompt lab test below).
    ("POST", "/api/prompts/compare"): (Role.PROMPT_ENGINEER, lambda s: {"url": "/api/prompts/compare", "json": {"template": BROKEN_TEMPLATE, "shoppers": 1}}),
    # Requests the catalog refuses past the login check, so the session's shared catalog is left as it is
    # (tests/test_catalog_live.py changes a catalog of its own).
    ("POST", "/api/catalog/items"): (Role.CATALOG, lambda s: {"url": "/api/catalog/items", "json": {"item_id": s["item"]}}),
    ("DELETE", "/api/catalog/items/{item_id}"): (Role.CATALOG, lambda s: {"url": "/api/catalog/items/no-such-item"}),
}
# What the right role gets; 200 unless listed.
ANSWER = {("POST", "/api/prompts/compare"): 422, ("POST", "/api/catalog/items"): 422, ("DELETE", "/api/catalog/items/{item_id}"): 404}
BROKEN_TEMPLATE = "name: x\nversion: 1\nvariables: [facts]\nmessages: []\n"
VIEWS = {"/support": (Role.SUPPORT,), "/prompt-lab": (Role.PROMPT_ENGINEER,), "/staff": (Role.SUPPORT, Role.PROMPT_ENGINEER)}


def _current_template() -> str:
    from whyrec.explainer import load_template

    return Path(load_template("shopper").source).read_text()


def _route_table(routes, prefix: str = "") -> set[tuple[str, str]]:
    """(method, path) of every route the app serves; ("MOUNT", path) for a mounted sub-application."""
    found = set()
    for route in routes:
        if isinstance(route, Mount):
            found.add(("MOUNT", prefix + route.path))
        elif hasattr(route, "original_router"):  # FastAPI >= 0.165 keeps an included router as one entry
            found |= _route_table(route.original_router.routes, prefix + (route.include_context.prefix or ""))
        else:
            found |= {(method, prefix + route.path) for method in (route.methods or ()) if method != "HEAD"}
    return found


def test_every_route_of_the_app_is_either_public_on_purpose_or_protected_by_a_role(served):
    app, _client, _ = served
    served_routes = _route_table(app.routes)
    unaccounted = served_routes - PUBLIC - set(PROTECTED) - {("MOUNT", v) for v in VIEWS}
    assert not unaccounted, f"routes neither listed as public nor protected by a role (add a role dependency): {sorted(unaccounted)}"
    assert set(PROTECTED) | {("MOUNT", v) for v in VIEWS} <= served_routes, "a protected route listed here is no longer served"


@pytest.mark.parametrize("route", sorted(PROTECTED), ids=lambda r: f"{r[0]} {r[1]}")
def test_a_protected_route_refuses_no_login_401_and_the_wrong_role_403(served, route):
    _app, client, sample = served
    role, request = PROTECTED[route]
    args = request(sample)
    anonymous = client.request(route[0], **args)
    assert anonymous.status_code == 401 and "WWW-Authenticate" in anonymous.headers
    assert client.request(route[0], **args, auth=(ROLE_LOGIN[role][0], "not the password")).status_code == 401
    wrong = client.request(route[0], **args, auth=OTHER_ROLE[role])
    assert wrong.status_code == 403 and role.value in wrong.json()["detail"]


@pytest.mark.parametrize("route", sorted(PROTECTED), ids=lambda r: f"{r[0]} {r[1]}")
def test_a_protected_route_answers_the_right_role_and_the_admin(served, route):
    _app, client, sample = served
    role, request = PROTECTED[route]
    for login in (ROLE_LOGIN[role], ADMIN):
        response = client.request(route[0], **request(sample), auth=login)
        assert response.status_code == ANSWER.get(route, 200), response.text


def test_the_prompt_lab_api_lists_templates_and_compares_an_edit(served):
    _app, client, _ = served
    listed = {t["name"]: t for t in client.get("/api/prompts", auth=ENGINEER).json()}
    assert listed["shopper"]["in_use"] == "shopper.v4" and 2 in listed["shopper"]["versions"] and "support" in listed
    edited = _current_template().replace("Use only the facts.", "Use only the facts. Be brief.")
    body = client.post("/api/prompts/compare", json={"template": edited, "shoppers": 1}, auth=ENGINEER).json()
    assert body["current"]["label"] == "shopper.v4" and "Be brief." in body["diff"] and len(body["candidate"]["texts"]) == 1
    broken = client.post("/api/prompts/compare", json={"template": BROKEN_TEMPLATE}, auth=ENGINEER)
    assert broken.status_code == 422 and "messages" in broken.json()["detail"]


@pytest.mark.parametrize("view", sorted(VIEWS))
def test_each_staff_view_admits_only_logins_with_its_roles(served, view):
    _app, client, _ = served
    roles = VIEWS[view]
    client.cookies.clear()
    assert client.get(f"{view}/config").status_code == 401  # the view's app is closed before a login
    for login in (SUPPORT, ENGINEER, ADMIN):
        allowed = login == ADMIN or (len(roles) == 1 and login == ROLE_LOGIN[roles[0]])
        client.cookies.clear()
        response = client.post(f"{view}/login", data={"username": login[0], "password": login[1]})
        assert (response.status_code == 200) == allowed, (view, login[0], response.status_code)
        assert (client.get(f"{view}/config").status_code == 200) == allowed
    client.cookies.clear()


def test_a_malformed_accounts_file_is_refused_naming_the_line():
    with pytest.raises(ConfigError, match=r"accounts line 2: unknown role in 'superuser'"):
        parse_accounts(f"ok:support:{_hash('x')}\nbad:superuser:{_hash('y')}\n", "accounts")
    with pytest.raises(ConfigError, match=r"line 1: .*must be a hash"):
        parse_accounts("plain:support:hunter2\n", "accounts")


def test_the_single_staff_account_of_older_setups_is_an_admin_with_every_role(slice_settings):
    accounts = load_accounts(slice_settings.model_copy(update={"staff_user": "old", "staff_password_hash": _hash("pw")}))
    assert accounts["old"].roles == frozenset(Role)


# ---- rate limiting ----


@pytest.fixture(scope="module")
def limited(slice_settings, slice_recommender, tmp_path_factory):
    from whyrec.service.api import create_app
    from whyrec.service.service import WhyrecService
    from whyrec.service.store import Store
    from whyrec.service.telemetry import ServiceMetrics

    settings = slice_settings.model_copy(update={
        "rate_limit_per_minute": 6, "rate_limit_burst": 3,
        "staff_user": ADMIN[0], "staff_password_hash": _hash(ADMIN[1]),
        "database_url": f"sqlite:///{tmp_path_factory.mktemp('limited-store') / 'whyrec.sqlite3'}",
    })
    app = create_app(WhyrecService(slice_recommender, Store(settings.database_url), ServiceMetrics()), settings)
    return app


def test_a_client_over_the_rate_gets_429_with_retry_after_and_a_clear_message(limited):
    client = TestClient(limited, client=("203.0.113.7", 50000))
    # Unknown shoppers answer fast (404) and still count: the limit applies before any work.
    codes = [client.get("/api/shoppers/nobody/items/x/explanation").status_code for _ in range(4)]
    assert codes == [404, 404, 404, 429]
    refused = client.post("/api/shoppers/nobody/events", json={"item_id": "x"})
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) == 10  # 1 request per 10 s at 6 a minute
    assert "203.0.113.7" in refused.json()["detail"] and "6 a minute" in refused.json()["detail"]


def test_the_rate_limit_is_per_client_and_leaves_staff_endpoints_alone(limited):
    busy = TestClient(limited, client=("203.0.113.8", 50000))
    for _ in range(3):
        busy.get("/api/shoppers/nobody/items/x/explanation")
    assert busy.get("/api/shoppers/nobody/items/x/explanation").status_code == 429
    assert busy.get("/api/impressions", auth=ADMIN).status_code == 200
    other = TestClient(limited, client=("203.0.113.9", 50000))
    assert other.get("/api/shoppers/nobody/items/x/explanation").status_code == 404


def test_the_bucket_refills_at_the_configured_rate():
    now = [0.0]
    limiter = RateLimiter(per_minute=60, burst=2, clock=lambda: now[0])
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]
    now[0] = 1.0
    assert limiter.acquire("a") == 0.0 and limiter.acquire("a") == pytest.approx(1.0)


# ---- nothing that identifies the shopper reaches the LLM ----


class _RecordingLLM(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint that keeps every request body. A fake on purpose: the real vLLM
    server cannot show what it was sent, and the request body is what is under test."""

    bodies: list[str] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        self.bodies.append(body)
        reply = {"id": "x", "object": "chat.completion", "created": 0, "model": "recorder",
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": '{"text": "A note.", "facts": ["F1"]}'}, "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def recorded(slice_settings, slice_catalog, slice_retriever, slice_ranker, tmp_path_factory):
    """A shopper known only by an email-like id, asking in their own words, served through the
    API with the OpenAI-compatible (vLLM) backend pointed at the recorder."""
    from whyrec.pipeline import Recommender, build_explainer
    from whyrec.service.api import create_app
    from whyrec.service.service import WhyrecService
    from whyrec.service.store import Store
    from whyrec.service.telemetry import ServiceMetrics

    server = ThreadingHTTPServer(("127.0.0.1", 0), _RecordingLLM)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings = slice_settings.model_copy(update={
        "llm_url": f"http://127.0.0.1:{server.server_port}/v1", "llm_model": "recorder", "explanation_cache_size": 0,
        "database_url": f"sqlite:///{tmp_path_factory.mktemp('pii-store') / 'whyrec.sqlite3'}",
    })
    recommender = Recommender(settings, slice_catalog, slice_retriever, slice_ranker, build_explainer(settings))
    service = WhyrecService(recommender, Store(settings.database_url), ServiceMetrics())
    bought = slice_catalog.sequence(slice_catalog.users[40])[:3]
    with TestClient(create_app(service, settings)) as client:
        for item in bought:
            assert client.post(f"/api/shoppers/{MARKER}/events", json={"item_id": item, "kind": "purchase"}).status_code == 201
        slate = client.get(f"/api/shoppers/{MARKER}/recommendations", params={"k": 2, "q": ASK})
        assert slate.status_code == 200, slate.text
        with client.stream("GET", f"/api/shoppers/{MARKER}/recommendations/stream", params={"k": 2, "q": ASK}) as stream:
            lines = [json.loads(line) for line in stream.iter_lines() if line]
        other = next(i for i in slice_catalog.items if i not in bought)
        assert client.get(f"/api/shoppers/{MARKER}/items/{other}/explanation", params={"k": 2}).status_code == 200
        yield service, slate.json(), lines, list(_RecordingLLM.bodies)
    server.shutdown()


def test_no_request_to_the_llm_server_carries_the_shopper_id_or_their_words(recorded):
    _service, _slate, _stream, bodies = recorded
    assert len(bodies) >= 5  # the slate, the streamed slate and the single explanation all asked the server
    for body in bodies:
        request = json.loads(body)
        assert set(request) <= {"messages", "model", "max_tokens", "max_completion_tokens", "temperature", "stream", "n"}, "no 'user' or metadata field"
        for needle in NEEDLES:
            assert needle not in body.lower(), f"'{needle}' was sent to the LLM: {body[:300]}"
        assert "[F1]" in body  # what is sent is the fact block


def test_the_logged_prompts_of_a_real_slate_hold_item_facts_only(recorded):
    from whyrec.explainer import load_template
    from whyrec.explainer.explainer import render_prompt

    service, slate, stream, _ = recorded
    logged = [service.store.impression(slate["impression_id"]), service.store.impression(stream[-1]["impression_id"])]
    support = load_template("support")
    for record in logged:
        for item in record.items:
            messages = [m.content for m in item.prompt]
            # The support agent's wording of the same facts, too.
            table_text = "\n".join(f["text"] for f in (m.model_dump() for m in item.fact_table))
            support_messages = [c for _, c in render_prompt(support, _table(record.user_id, item))]
            for text in [*messages, *support_messages, table_text]:
                assert not [n for n in NEEDLES if n in text.lower()]


def _table(user_id, item):
    from whyrec.core.schema import fact_table_from_json

    return fact_table_from_json([f.model_dump() for f in item.fact_table], "the logged fact table", user_id, item.item_id)


# ---- loopback by default ----


def test_the_default_bind_address_is_loopback(monkeypatch):
    from whyrec.core.config import Settings

    monkeypatch.delenv("WHYREC_HOST", raising=False)
    assert Settings().host == "127.0.0.1"
