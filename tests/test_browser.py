"""One flow per view in a real browser (Debian's Chromium, headless) against `whyrec serve` on the
trained 80-shopper Office slice: ask and read an explanation, then click a control and see the list
change (Shop); look up an impression and ask "why not" (Support); run an edited template and save it
(Prompt lab). Screenshots go to test-artifacts/browser/."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from whyrec.core.schema import FactKind
from whyrec.explainer import check_grounding, checked_template
from whyrec.service.passwords import hash_password

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts" / "browser"
STAFF = ("agent", "correct horse")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]
SLOW = 240_000  # ms: generation on a busy 2-core CPU


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(process: subprocess.Popen, url: str, log: Path, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while True:
        assert process.poll() is None, log.read_text()
        try:
            if json.load(urllib.request.urlopen(f"{url}/api/health", timeout=5))["status"] == "ok":
                return
        except OSError:
            pass
        assert time.time() < deadline, f"{url} did not answer in time:\n" + log.read_text()
        time.sleep(1)


@pytest.fixture(scope="module")
def server(office_slice, cache_dir, slice_training, tmp_path_factory):
    """`whyrec serve` as a real process, with its own SQLite store and prompts folder."""
    folder = tmp_path_factory.mktemp("served")
    port = _free_port()
    env = {
        **os.environ,
        "WHYREC_DATA": str(office_slice),
        "WHYREC_CACHE_DIR": str(cache_dir),
        "WHYREC_AUTO_TRAIN": "false",
        "WHYREC_DATABASE_URL": f"sqlite:///{folder / 'whyrec.sqlite3'}",
        "WHYREC_STAFF_USER": STAFF[0],
        "WHYREC_STAFF_PASSWORD_HASH": hash_password(STAFF[1], iterations=1_000),
        "WHYREC_PROMPTS_DIR": str(folder / "prompts"),
        "WHYREC_SHOP_K": "2",
        "WHYREC_MAX_NEW_TOKENS": "40",  # short answers keep CPU generation quick
        "OMP_WAIT_POLICY": "PASSIVE",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    log = (folder / "server.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "whyrec.cli", "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(process, url, folder / "server.log", 300)
        yield url, folder
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def browser():
    chromium = _chromium()
    if chromium is None:
        if os.environ.get("WHYREC_REQUIRE_BROWSER"):
            pytest.fail("chromium is not installed (scripts/test.sh installs Debian's package)")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    yield page
    context.close()


def _shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def _card_ids(page) -> list[str]:
    return page.locator(".whyrec-card").evaluate_all("cards => cards.map(c => c.dataset.itemId)")


def test_shop_shopper_reads_why_and_not_interested_changes_the_list(server, page):
    url, _ = server
    page.goto(f"{url}/shop/")
    page.locator("#shop-input textarea").fill("show me something for my desk")
    page.locator("#shop-input textarea").press("Enter")
    page.wait_for_function("document.querySelectorAll('.whyrec-card .whyrec-text').length == 2", timeout=SLOW)
    first = _card_ids(page)
    assert len(first) == 2 and page.locator(".whyrec-card .whyrec-text").first.inner_text().strip()

    chip = page.locator(".whyrec-card").first.locator("details.whyrec-chip").first
    chip.locator("summary").click()
    assert chip.evaluate("d => d.open") and chip.inner_text().strip()
    page.locator("#shop-chat").get_by_text("picks").first.wait_for()
    # The reasons show at once; the chat takes the next question once the cards have settled
    # (the model's texts written or the templates kept), which the assistant says.
    page.locator("#shop-chat").get_by_text("Every card now shows its reason").wait_for(timeout=SLOW)
    page.locator("#shop-input textarea").fill("why this one?")
    page.locator("#shop-input textarea").press("Enter")
    page.locator("#shop-chat").get_by_text("What this rests on").wait_for(timeout=60_000)
    _shot(page, "shop-explained")

    page.locator(".ctl-not-interested").first.click()
    page.wait_for_function(
        f"(() => {{ const c = [...document.querySelectorAll('.whyrec-card')]; return c.length == 2 && !c.some(x => x.dataset.itemId == {json.dumps(first[0])}) "
        "&& document.querySelectorAll('.whyrec-card .whyrec-text').length == 2; })()",
        timeout=SLOW,
    )
    assert first[0] not in _card_ids(page)
    page.locator("#shop-chat").get_by_text("won't see").wait_for()
    _shot(page, "shop")


def _ask_as(page, url: str, user: str, words: str) -> None:
    """Open the Shop view signed in as `user` and ask for picks."""
    page.goto(f"{url}/shop/")
    shopper = page.locator("#shop-shopper input")
    shopper.fill(user)
    shopper.press("Enter")
    page.locator("#shop-input textarea").fill(words)
    page.locator("#shop-input textarea").press("Enter")


def _collaborative_pick(recommender, users: list[str], k: int):
    """A shopper whose top k holds an item that shares no brand, category or use with their history
    and is there because of what other shoppers did next (the desk after the phone)."""
    plain = {FactKind.SHARED_BRAND, FactKind.SHARED_CATEGORY, FactKind.SHARED_USE}
    for user in users:
        slate = recommender.rank(user, k)
        for item, table in zip(slate.items, slate.tables):
            kinds = {f.kind for f in table.facts}
            if kinds & {FactKind.BOUGHT_TOGETHER, FactKind.VIEWED_TOGETHER} and not kinds & plain:
                return user, item.item_id, table
    pytest.fail("no shopper of the slice has a top item explained only by what other shoppers did")


def test_shop_reason_names_what_other_shoppers_did_with_the_count(server, page, slice_recommender, slice_catalog):
    url, _ = server
    # The first shopper's slate is changed by the "not interested" click of the test above.
    user, item_id, table = _collaborative_pick(slice_recommender, slice_catalog.users[1:], k=2)
    together = next(f for f in table.facts if f.kind in (FactKind.BOUGHT_TOGETHER, FactKind.VIEWED_TOGETHER))
    _ask_as(page, url, user, "show me something")
    card = page.locator(f'.whyrec-card[data-item-id="{item_id}"]')
    card.locator(".whyrec-text").wait_for(timeout=SLOW)
    text = card.locator(".whyrec-text").inner_text().strip()
    badge = card.locator(".whyrec-badge").inner_text()
    _shot(page, "shop-collaborative")
    if "built from the facts" in badge:
        # The template states the strongest true relation: here the count of other shoppers.
        assert checked_template(table)[0] == text
        assert re.search(rf"\b{together.count} other shoppers?\b", text), text
    else:  # a model sentence was shown: it passed the same check against the same facts
        assert check_grounding(text, table).passed, text


def test_shop_shows_checked_reasons_at_once_then_the_models_in_place_and_the_next_visit_at_once(server, page, slice_catalog):
    url, _ = server
    user = slice_catalog.users[30]  # no earlier test or pre-warm reached this shopper
    _ask_as(page, url, user, "show me something")
    page.wait_for_function("document.querySelectorAll('.whyrec-card .whyrec-text').length == 2", timeout=60_000)
    first = page.locator(".whyrec-card .whyrec-badge").all_inner_texts()
    assert all("built from the facts; the assistant's own words are on the way" in b for b in first), first
    _shot(page, "shop-pending")
    # Each card is updated in place as its model text is stored (or settles as the checked template).
    page.wait_for_function("[...document.querySelectorAll('.whyrec-card .whyrec-badge')].every(b => !b.innerText.includes('on the way'))", timeout=SLOW)
    settled = page.locator(".whyrec-card .whyrec-text").all_inner_texts()
    _shot(page, "shop-written")

    _ask_as(page, url, user, "show me something")
    page.wait_for_function("document.querySelectorAll('.whyrec-card .whyrec-text').length == 2", timeout=60_000)
    again = page.locator(".whyrec-card .whyrec-badge").all_inner_texts()
    assert not any("on the way" in b for b in again), again  # stored: shown at once, nothing pending
    assert page.locator(".whyrec-card .whyrec-text").all_inner_texts() == settled
    _shot(page, "shop-next-visit")


@pytest.fixture(scope="module")
def demo(cache_dir, tmp_path_factory):
    """`whyrec demo` as a new user starts it: the bundled sample shop, the shipped adapter, the
    in-process generator, pre-warm on, a slate of 10 in the Shop view."""
    folder = tmp_path_factory.mktemp("demo")
    port = _free_port()
    env = {**os.environ, "WHYREC_CACHE_DIR": str(cache_dir), "WHYREC_DATABASE_URL": f"sqlite:///{folder / 'whyrec.sqlite3'}",
           "OMP_WAIT_POLICY": "PASSIVE", "GRADIO_ANALYTICS_ENABLED": "False"}
    for name in ("WHYREC_DATA", "WHYREC_SHOP_K", "WHYREC_ADAPTER", "WHYREC_PREWARM_SHOPPERS", "WHYREC_LLM_URL"):
        env.pop(name, None)
    log = (folder / "demo.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "whyrec.cli", "demo", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(process, url, folder / "demo.log", 900)  # a fresh cache trains the sample shop's models first
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


MODEL_BADGE = "written by the model, checked against the facts"


WRITTEN_WITHIN_S = 20.0  # the goal for a shopper the background explainer had not reached


def test_demo_serves_the_sample_store_on_localhost(demo):
    """The same `whyrec demo` the next test reads (one start of it in the suite, not two)."""
    page = urllib.request.urlopen(f"{demo}/", timeout=30).read().decode()
    assert "whyrec" in page
    port = demo.rsplit(":", 1)[1]
    listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
    local_addresses = [line.split()[3] for line in listening.splitlines()]
    assert local_addresses == [f"127.0.0.1:{port}"]


def test_the_demo_shows_checked_reasons_at_once_then_8_of_10_in_the_models_own_words_within_20s_in_place_and_the_next_visit_at_once(demo, page):
    from whyrec.core.config import Settings
    from whyrec.pipeline import load_data

    # The pre-warm takes the shop's first 12 shoppers: this one the background had not reached.
    user = load_data(Settings()).users[-1]
    _ask_as(page, demo, user, "show me something")
    asked = time.monotonic()  # the shopper's request is on its way
    page.wait_for_function("document.querySelectorAll('.whyrec-card .whyrec-text').length == 10", timeout=60_000)
    print(f"demo: the first page showed 10 checked reasons {time.monotonic() - asked:.1f}s after the request")
    first = page.locator(".whyrec-card .whyrec-badge").all_inner_texts()
    assert all("on the way" in b or MODEL_BADGE in b for b in first), first
    _shot(page, "demo-first-page")
    # The cards are updated in place: within 20 s of the request at least 8 of the 10 show the
    # model's own checked words (the background explainer stops its pre-warm batch for this
    # shopper; over the API it takes 13-14 s on 2 cores, README "Page latency").
    left_ms = max(1, int((WRITTEN_WITHIN_S - (time.monotonic() - asked)) * 1000))
    written = f"[...document.querySelectorAll('.whyrec-card .whyrec-badge')].filter(b => b.innerText.includes({json.dumps(MODEL_BADGE)})).length >= 8"
    page.wait_for_function(written, timeout=left_ms)
    in_place = sum(MODEL_BADGE in b for b in page.locator(".whyrec-card .whyrec-badge").all_inner_texts())
    print(f"demo: {in_place} of 10 reasons written by the model {time.monotonic() - asked:.1f}s after the first request")
    _shot(page, "demo-written")
    page.locator("#shop-chat").get_by_text("Every card now shows its reason").wait_for(timeout=SLOW)
    while any(i["explanation"]["pending"] for i in json.load(urllib.request.urlopen(f"{demo}/api/shoppers/{user}/recommendations?k=10", timeout=60))["items"]):
        assert time.monotonic() - asked < SLOW / 1000, "the background explainer did not finish the shopper's slate"
        time.sleep(2)
    print(f"demo: the slate was settled {time.monotonic() - asked:.0f}s after the first request")

    _ask_as(page, demo, user, "show me something")
    page.wait_for_function("document.querySelectorAll('.whyrec-card .whyrec-text').length == 10", timeout=60_000)
    again = page.locator(".whyrec-card .whyrec-badge").all_inner_texts()
    assert not any("on the way" in b or "next visit" in b for b in again), again  # stored: shown at once
    assert sum(MODEL_BADGE in b for b in again) >= 8, again
    _shot(page, "demo-next-visit")


def _login(page, url: str) -> None:
    page.goto(f"{url}/staff/")
    page.locator('input[data-testid="textbox"]').fill(STAFF[0])
    page.locator('input[data-testid="password"]').fill(STAFF[1])
    page.get_by_role("button", name="Login").click()
    page.locator("#support-lookup").wait_for()


def test_support_agent_finds_the_impression_and_asks_why_not(server, page, slice_catalog):
    url, _ = server
    user = slice_catalog.users[21]
    served = json.load(urllib.request.urlopen(f"{url}/api/shoppers/{user}/recommendations?k=1", timeout=600))
    shown = served["items"][0]
    other = next(i for i in slice_catalog.items if i not in slice_catalog.sequence(user) and i != shown["item_id"])

    page.goto(f"{url}/staff/")
    assert page.locator("#support-lookup").count() == 0  # the login page, not the console
    _login(page, url)
    page.locator("#support-shopper textarea").fill(user)
    page.locator("#support-item textarea").fill(shown["item_id"])
    page.locator("#support-lookup").click()
    record = page.locator("#support-record-body")
    record.wait_for(timeout=60_000)
    assert shown["explanation"]["text"] in record.locator(".shown-text").inner_text()
    assert served["impression_id"] in record.inner_text()
    assert "[F1]" in record.locator("pre.prompt").inner_text()
    assert page.locator(".attribution-chart .attr-row").count() >= 1

    page.locator("#support-item textarea").fill(other)
    page.locator("#support-whynot").click()
    page.locator("#support-whynot-body").wait_for(timeout=60_000)
    assert "What would change it" in page.locator("#support-whynot-body").inner_text()
    page.locator("#support-item textarea").fill(shown["item_id"])  # the screenshot shows both answers for one lookup
    _shot(page, "support")


def test_prompt_lab_runs_an_edit_side_by_side_and_saves_it_as_a_new_version(server, page):
    url, folder = server
    _login(page, url)
    page.get_by_role("tab", name="Prompt lab").click()
    editor = page.locator("#lab-template .cm-content")
    editor.wait_for()
    assert "name: shopper" in editor.inner_text()
    # The edit starts from the file (the editor's innerText doubles blank lines).
    current = (REPO / "prompts" / "shopper.v4.yaml").read_text()
    edited = current.replace("Use only the facts.", "Use only the facts. Keep it under twenty words.")
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.insert_text(edited)
    page.keyboard.press("Control+Home")
    sample = page.locator("#lab-sample input[type=number]")
    sample.fill("2")
    sample.press("Enter")
    page.locator("#lab-run").click()
    page.locator("#lab-metrics").get_by_text("(edited)").wait_for(timeout=SLOW)
    metrics = page.locator("#lab-metrics").inner_text()
    assert "shopper.v4 (current)" in metrics
    diff = page.locator("#lab-diff").inner_text()
    assert "Keep it under twenty words" in diff and diff.count("@@") == 2  # one hunk: the one edited line

    page.locator("#lab-save").click()
    page.locator("#lab-status").get_by_text("shopper.v5", exact=True).wait_for(timeout=60_000)
    saved = folder / "prompts" / "shopper.v5.yaml"
    assert "Keep it under twenty words" in saved.read_text() and "version: 5" in saved.read_text()
    _shot(page, "prompt-lab")
