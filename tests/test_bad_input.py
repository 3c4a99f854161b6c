"""Bad input at every door: the JSON API, the CLI, the loaders and the Prompt lab. Each kind gets a
clear 4xx or error naming what was wrong, and nothing is half-written. New shoppers are not an error
on the shopper-facing slate endpoints: they get popular and new items with an honest reason."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from whyrec.core.catalog import Catalog, EventKind, Interaction
from whyrec.core.errors import ConfigError
from whyrec.explainer.grounding import check_grounding
from whyrec.explainer.templates import parse_template
from whyrec.retrieval.popularity import PopularItems
from whyrec.service.passwords import hash_password

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = (REPO / "prompts" / "shopper.v2.yaml").read_text()
STAFF = ("agent", "correct horse")
WHYREC = [sys.executable, "-m", "whyrec.cli"]

# ---- Prompt lab: templates ----

BAD_TEMPLATES = {
    "attribute access": (TEMPLATE.replace("{facts}", "{facts.__class__}"), "{facts.__class__} is not allowed"),
    "index access": (TEMPLATE.replace("{facts}", "{facts[0]}"), "{facts[0]} is not allowed"),
    "conversion": (TEMPLATE.replace("{facts}", "{facts!r}"), "{facts!r} is not allowed"),
    "jinja expression": (TEMPLATE.replace("{facts}", "{facts} {{ facts.__class__.__init__.__globals__ }}"), "Jinja syntax"),
    "jinja statement": (TEMPLATE.replace("{facts}", "{facts} {% for f in facts %}x{% endfor %}"), "Jinja syntax"),
    "jinja2 format": (TEMPLATE.replace("variables: [facts]", "variables: [facts]\ntemplate_format: jinja2"), "template_format 'jinja2' is not supported"),
    "unknown variable": (TEMPLATE.replace("variables: [facts]", "variables: [facts, email]").replace("{facts}", "{facts} {email}"), "unknown variables ['email']"),
    "declared but unused": (TEMPLATE.replace("variables: [facts]", "variables: [facts, item_title]"), "declared but unused: ['item_title']"),
    "used but not declared": (TEMPLATE.replace("{facts}", "{facts} {item_title}"), "used but not declared: ['item_title']"),
    "no facts": (TEMPLATE.replace("variables: [facts]", "variables: [item_title]").replace("{facts}", "{item_title}"), "never use {facts}"),
    "lone brace": (TEMPLATE.replace("{facts}", "{facts} }"), "malformed placeholder"),
    "not yaml": ("name: [unclosed", "not valid YAML"),
}


@pytest.mark.parametrize("case", sorted(BAD_TEMPLATES))
def test_a_malformed_or_injecting_template_is_refused_with_the_reason(case):
    text, reason = BAD_TEMPLATES[case]
    with pytest.raises(ConfigError) as refused:
        parse_template(text, source="the edited template")
    assert reason in str(refused.value) and "the edited template" in str(refused.value)


def test_the_shipped_templates_and_literal_json_braces_pass_the_template_check():
    for path in (REPO / "prompts").glob("*.yaml"):
        parse_template(path.read_text(), source=str(path))
    assert '{{"text"' in TEMPLATE  # a literal brace, not Jinja


# ---- popularity (cold start) ----


def test_new_items_are_those_first_seen_in_the_last_30_days_of_the_data():
    from datetime import datetime, timedelta, timezone

    day = datetime(2026, 1, 1, tzinfo=timezone.utc)
    events = [Interaction(f"u{u}", "old", EventKind.PURCHASE, day) for u in range(5)]
    events += [Interaction(f"u{u}", "recent", EventKind.VIEW, day + timedelta(days=70)) for u in range(2)]
    events += [Interaction("u0", "older", EventKind.VIEW, day + timedelta(days=10)), Interaction("u1", "older", EventKind.VIEW, day + timedelta(days=90))]
    popular = PopularItems(events)
    by_id = {p.item_id: p for p in popular.items}
    assert by_id["recent"].new and not by_id["old"].new and not by_id["older"].new
    assert [p.item_id for p in popular.pick(3)] == ["old", "older", "recent"]
    assert [p.item_id for p in popular.pick(3, exclude={"old"})] == ["older", "recent"]
    assert not any(p.new for p in PopularItems([Interaction("u", "x")]).items)  # no times, nothing is called new


# ---- the API ----


@pytest.fixture(scope="module")
def app_parts(slice_settings, slice_catalog, slice_retriever, slice_ranker, tmp_path_factory):
    from whyrec.pipeline import Recommender, build_explainer
    from whyrec.service.api import create_app
    from whyrec.service.service import WhyrecService
    from whyrec.service.store import Store
    from whyrec.service.telemetry import ServiceMetrics

    settings = slice_settings.model_copy(update={
        "max_new_tokens": 40,
        "database_url": f"sqlite:///{tmp_path_factory.mktemp('bad-input-store') / 'whyrec.sqlite3'}",
        "staff_user": STAFF[0],
        "staff_password_hash": hash_password(STAFF[1], iterations=1_000),
        "max_events_per_shopper": 300,
    })
    recommender = Recommender(settings, slice_catalog, slice_retriever, slice_ranker, build_explainer(settings))
    service = WhyrecService(recommender, Store(settings.database_url), ServiceMetrics())
    return create_app(service, settings), service


@pytest.fixture(scope="module")
def client(app_parts):
    from fastapi.testclient import TestClient

    with TestClient(app_parts[0]) as client:
        yield client


@pytest.fixture(scope="module")
def service(app_parts):
    return app_parts[1]


def _assert_cold_start_slate(client, body, excluded=()):
    assert body["cold_start"] is True and body["items"]
    record = client.get(f"/api/impressions/{body['impression_id']}", auth=STAFF).json()
    for shown, logged in zip(body["items"], record["items"]):
        explanation = shown["explanation"]
        assert explanation["text"] in ("Popular with shoppers in this shop.",) or explanation["text"].startswith("New in ")
        assert explanation["source"] == "template" and explanation["attempts"] == []  # no generator call
        assert not any(f["about_history"] for f in logged["fact_table"])  # nothing claims a history
        assert "popular" in [f["kind"] for f in explanation["facts"]] + [f["kind"] for f in logged["fact_table"]]
        assert logged["prompt"] == [] and shown["item_id"] not in excluded
        assert _grounded(explanation["text"], logged["fact_table"])


def _grounded(text, fact_table):
    from whyrec.core.schema import fact_table_from_json

    return check_grounding(text, fact_table_from_json(fact_table, "the logged fact table")).passed


@pytest.mark.integration
def test_a_shopper_the_shop_has_never_seen_gets_popular_items_with_an_honest_reason(client, slice_catalog):
    response = client.get("/api/shoppers/never-seen-before/recommendations", params={"k": 4})
    assert response.status_code == 200, response.text
    body = response.json()
    _assert_cold_start_slate(client, body)
    counts = PopularItems(slice_catalog.interactions)
    assert [i["item_id"] for i in body["items"]] == [p.item_id for p in counts.pick(4)]

    with client.stream("GET", "/api/shoppers/never-seen-either/recommendations/stream", params={"k": 2}) as streamed:
        events = [json.loads(line) for line in streamed.iter_lines() if line]
    assert events[0]["event"] == "slate" and events[0]["cold_start"] is True and events[-1]["event"] == "done"


@pytest.mark.integration
def test_a_shopper_who_excluded_every_purchase_gets_popular_items_that_never_cite_them(client, slice_catalog):
    user = min(slice_catalog.users, key=lambda u: len(slice_catalog.sequence(u)))
    history = slice_catalog.sequence(user)
    for item_id in history:
        response = client.post(f"/api/shoppers/{user}/feedback", json={"kind": "exclude_purchase", "item_id": item_id})
        assert response.status_code == 201, response.text
    body = client.get(f"/api/shoppers/{user}/recommendations", params={"k": 3}).json()
    _assert_cold_start_slate(client, body, excluded=history)
    # A new shopper can still say "not interested" about a popular item, and it goes away.
    first = body["items"][0]["item_id"]
    assert client.post(f"/api/shoppers/{user}/feedback", json={"kind": "not_interested", "item_id": first}).status_code == 201
    assert first not in [i["item_id"] for i in client.get(f"/api/shoppers/{user}/recommendations", params={"k": 3}).json()["items"]]


@pytest.mark.integration
def test_unknown_ids_get_a_404_naming_the_id_on_staff_and_item_endpoints(client, slice_catalog):
    user, item = slice_catalog.users[3], next(iter(slice_catalog.items))
    for method, url, body, missing in [
        ("GET", f"/api/shoppers/nobody-here/items/{item}/why-not", None, "nobody-here"),
        ("GET", f"/api/shoppers/{user}/items/no-such-item/why-not", None, "no-such-item"),
        ("GET", f"/api/shoppers/{user}/items/no-such-item/explanation", None, "no-such-item"),
        ("GET", f"/api/shoppers/nobody-here/items/{item}/explanation", None, "nobody-here"),
        ("GET", "/api/impressions/0123abcd", None, "0123abcd"),
        ("POST", f"/api/shoppers/{user}/events", {"item_id": "no-such-item"}, "no-such-item"),
        ("POST", f"/api/shoppers/{user}/feedback", {"kind": "not_interested", "item_id": "no-such-item"}, "no-such-item"),
        ("POST", f"/api/shoppers/nobody-here/feedback", {"kind": "exclude_purchase", "item_id": item}, "nobody-here"),
        ("POST", f"/api/shoppers/{user}/feedback", {"kind": "helpful", "item_id": item, "impression_id": "0123abcd"}, "0123abcd"),
    ]:
        response = client.request(method, url, json=body, auth=STAFF)
        assert response.status_code == 404, (url, response.text)
        assert missing in response.json()["detail"], url


@pytest.mark.integration
def test_unicode_ids_work_and_control_characters_get_a_422_naming_the_field(client, service, slice_catalog):
    shopper, item = "Zoë-試験-🛒", slice_catalog.sequence(slice_catalog.users[5])[-1]
    assert client.post(f"/api/shoppers/{shopper}/events", json={"item_id": item, "kind": "view"}).status_code == 201
    assert service.history(shopper)[-1].item_id == item
    why_not = client.get(f"/api/shoppers/{shopper}/items/{next(iter(slice_catalog.items))}/why-not", auth=STAFF)
    assert why_not.status_code == 200 and [a["history_item_id"] for a in why_not.json()["attributions"]] == [item]

    for method, url, params, body, field in [
        ("GET", "/api/shoppers/a%00b/recommendations", None, None, "path.user_id"),
        ("GET", "/api/shoppers/u1/recommendations", {"q": "desk\x07lamp"}, None, "query.q"),
        ("GET", f"/api/shoppers/u1/items/x%1By/why-not", None, None, "path.item_id"),
        ("POST", "/api/shoppers/u1/events", None, {"item_id": "x\u0085y"}, "body.item_id"),
        ("GET", "/api/impressions", {"user_id": "u\r\n1"}, None, "query.user_id"),
    ]:
        response = client.request(method, url, params=params, json=body, auth=STAFF)
        assert response.status_code == 422, (url, response.text)
        assert response.json()["detail"] == f"{field}: control characters are not allowed"
    assert service.store.event_count("u1") == 0


def test_an_unknown_query_parameter_gets_a_422_naming_it_and_what_the_endpoint_takes(client, slice_catalog):
    user = slice_catalog.users[0]
    response = client.get(f"/api/shoppers/{user}/recommendations", params={"kk": "5"})
    assert response.status_code == 422
    assert response.json()["detail"] == "query: unknown parameter 'kk' (this endpoint takes: k, q)"
    assert client.get("/api/impressions", params={"user": user}, auth=STAFF).status_code == 422


@pytest.mark.integration
def test_malformed_json_bodies_get_a_422_naming_the_field_and_write_nothing(client, service):
    user = "malformed-body-shopper"
    for content, expected in [
        (b'{"item_id": "1", ', "body: not valid JSON"),
        (b'{"kind": "view"}', "body.item_id: Field required"),
        (b'{"item_id": "1", "kind": "stolen"}', "body.kind: Input should be 'view', 'click', 'cart' or 'purchase'"),
        (b'{"item_id": ""}', "body.item_id: String should have at least 1 character"),
        (b'["item_id"]', "body: Input should be a valid dictionary"),
        (b'{"item_id": "caf\xe9"}', "body: not valid JSON (not UTF-8 text: byte 16 cannot be decoded)"),
    ]:
        response = client.post(f"/api/shoppers/{user}/events", content=content, headers={"content-type": "application/json"})
        assert response.status_code == 422 and response.json()["detail"].startswith(expected), response.text
    assert service.store.event_count(user) == 0


@pytest.mark.integration
def test_an_oversized_body_gets_a_413_naming_the_limit_and_writes_nothing(client, service, slice_catalog):
    user, item = "oversized-body-shopper", next(iter(slice_catalog.items))
    body = json.dumps({"item_id": item, "kind": "view", "padding": "x" * 20_000}).encode()
    response = client.post(f"/api/shoppers/{user}/events", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "16384 bytes" in response.json()["detail"]

    def chunks():  # no Content-Length: the limit counts what arrives
        yield body[:10_000]
        yield body[10_000:]

    response = client.post(f"/api/shoppers/{user}/events", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "16384 bytes" in response.json()["detail"]
    assert service.store.event_count(user) == 0


@pytest.mark.integration
def test_posted_events_stop_at_the_stated_limit_and_the_long_history_is_still_answered(client, service, slice_catalog):
    user, items = "busy-shopper", list(slice_catalog.items)
    for n in range(300):  # the fixture's limit
        service.store.add_event(user, items[n % len(items)], EventKind.VIEW)
    response = client.post(f"/api/shoppers/{user}/events", json={"item_id": items[0], "kind": "view"})
    assert response.status_code == 422 and "300 events" in response.json()["detail"] and user in response.json()["detail"]
    assert service.store.event_count(user) == 300
    why_not = client.get(f"/api/shoppers/{user}/items/{items[0]}/why-not", params={"k": 3}, auth=STAFF)
    assert why_not.status_code == 200, why_not.text


# ---- huge histories: only the recent window is read ----


@pytest.mark.integration
def test_a_100k_event_history_ranks_like_the_same_items_seen_once(slice_settings, slice_catalog, slice_retriever, slice_ranker, slice_recommender):
    from whyrec.pipeline import Recommender

    items = list(slice_catalog.items)[:300]
    long = [Interaction("long", items[n % len(items)], EventKind.VIEW) for n in range(100_000)]
    once = [Interaction("once", e.item_id, EventKind.VIEW) for e in long[-len(items):]]
    catalog = Catalog("slice-plus", slice_catalog.items, [*slice_catalog.interactions, *long, *once])
    recommender = Recommender(slice_settings, catalog, slice_retriever, slice_ranker, slice_recommender.explainer)
    ranked_long, ranked_once = recommender.rank("long", 3), recommender.rank("once", 3)
    assert [r.item_id for r in ranked_long.items] == [r.item_id for r in ranked_once.items]
    assert [r.ranker_score for r in ranked_long.items] == pytest.approx([r.ranker_score for r in ranked_once.items], abs=1e-4)
    assert ranked_long.tables == tuple(t.__class__("long", t.item_id, t.facts) for t in ranked_once.tables)


def test_a_100k_item_sequence_loads_whole(tmp_path):
    from whyrec.core.loaders import load_catalog

    (tmp_path / "Big.item.json").write_text(json.dumps({str(i): {"title": f"Item {i}"} for i in range(1000)}))
    (tmp_path / "Big.inter.json").write_text(json.dumps({"u1": [i % 1000 for i in range(100_000)], "u2": [1, 2]}))
    catalog = load_catalog(tmp_path)
    assert len(catalog.events("u1")) == 100_000 and len(catalog.sequence("u1")) == 1000


# ---- the CLI ----


def _cli(args, tmp_path):
    env = {**os.environ, "WHYREC_CACHE_DIR": str(tmp_path / "cache"), "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run([*WHYREC, *args], capture_output=True, text=True, env=env, timeout=300)


def test_cli_malformed_files_and_bad_options_fail_cleanly_and_write_nothing(tmp_path):
    # (A missing folder and unknown shopper/item ids: tests/test_cli.py.)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "items.jsonl").write_text('{"item_id": "a", "title": "A lamp"}\n{"item_id": "b", "title": \n')
    (broken / "interactions.jsonl").write_text('{"user_id": "u", "item_id": "a"}\n')
    for args, code, message in [
        (["train", "--data", str(broken)], 1, f"error: {broken / 'items.jsonl'}, row 2: invalid JSON"),
        (["recommend", "--user", "u", "-k", "0"], 2, "Invalid value for '-k'"),
        (["explain", "--user", "u"], 2, "Missing option '--item'"),
        (["eval", "ranker", "--diversity", "3"], 2, "Invalid value for '--diversity'"),
    ]:
        done = _cli(args, tmp_path)
        assert done.returncode == code, (args, done.stderr)
        assert message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
    cache = tmp_path / "cache"
    assert not cache.exists() or not any(cache.rglob("*")), list(cache.rglob("*"))  # no half-built models


# ---- the Prompt lab view ----


def _handler(blocks, elem_id: str, trigger: str = "click"):
    ids = {block.elem_id: block_id for block_id, block in blocks.blocks.items()}
    return next(f.fn for f in blocks.fns.values() if (ids[elem_id], trigger) in f.targets)


@pytest.mark.integration
def test_the_prompt_lab_view_refuses_a_jinja_template_and_saves_nothing(service, slice_settings, tmp_path):
    import gradio as gr

    from whyrec.ui.staff import build_staff

    prompts = tmp_path / "prompts"
    staff = build_staff(service, slice_settings.model_copy(update={"prompts_dir": prompts}))
    save, run = _handler(staff, "lab-save"), _handler(staff, "lab-run")
    injected = TEMPLATE.replace("{facts}", "{facts} {{ self.__init__.__globals__ }}")
    with pytest.raises(gr.Error) as refused:
        save(injected)
    assert "Jinja syntax" in str(refused.value)
    with pytest.raises(gr.Error) as refused:
        run(TEMPLATE.replace("{facts}", "{facts.__class__}"), 1, progress=lambda *a, **k: None)
    assert "{facts.__class__} is not allowed" in str(refused.value)
    assert not prompts.exists() or not any(prompts.iterdir())


@pytest.mark.integration
def test_the_support_view_shows_each_bad_input_as_an_error_naming_it(service, slice_settings, slice_catalog):
    import gradio as gr

    from whyrec.ui.staff import build_staff

    staff = build_staff(service, slice_settings)
    lookup, why_not = _handler(staff, "support-lookup"), _handler(staff, "support-whynot")
    user, item = slice_catalog.users[3], next(iter(slice_catalog.items))
    for handler, args, message in [
        (lookup, ("", item, ""), "enter a shopper id and an item id"),
        (lookup, (user, "no-such-item", ""), "unknown item 'no-such-item'"),
        (lookup, (user, item, "last tuesday"), "time 'last tuesday' is not an ISO 8601 date or time"),
        (why_not, ("nobody-here", item, 5), "unknown shopper 'nobody-here'"),
        (why_not, (user, "no-such-item", 5), "unknown item 'no-such-item'"),
        (why_not, (user, item, None), "enter a slate size"),
    ]:
        with pytest.raises(gr.Error) as shown:  # Gradio shows a gr.Error's message in the page
            handler(*args)
        assert message in str(shown.value), (args, str(shown.value))


@pytest.mark.integration
def test_the_shop_view_tells_a_new_shopper_their_picks_are_popular_and_new_items(service, slice_settings):
    from whyrec.ui.shop import build_shop

    shop = build_shop(service, slice_settings)
    respond = _handler(shop, "shop-input", "submit")
    *_, (chat, view, history, _box) = respond("show me something for my desk", [], "first-visit-shopper", None)
    assert "popular and new in this shop (there is no history of yours to go on yet)" in chat[-1]["content"]
    assert view.cards and all(card.text for card in view.cards) and view.impression_id
    assert history.startswith("**No activity yet.**")
