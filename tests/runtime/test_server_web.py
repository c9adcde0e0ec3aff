"""The web page at `/`, driven end to end in headless Chromium (Debian's `chromium` package, via Playwright's
Python API; no `playwright install`): send a prompt, watch the text stream in, the metrics and the expert heatmap
update, browse a memory and its links. Set M3EDGE_SCREENSHOT=path to keep a screenshot (docs/img/web.png)."""

import os
from pathlib import Path

import pytest

from test_server import Server

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"{CHROMIUM} is absent: apt-get install chromium (the Makefile's `chromium` step)")


@pytest.fixture
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def test_page_streams_a_chat_and_shows_experts_metrics_and_memories(tiny_bundle, tmp_path, browser):
    s = Server(tiny_bundle, tmp_path / "mem")
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 820})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        requests = []
        page.on("request", lambda r: requests.append(r.url))
        page.goto(f"http://127.0.0.1:{s.port}/")
        page.wait_for_selector("#heatmap .cell")  # the first stats poll drew the grid
        assert page.locator("#heatmap").get_attribute("data-total") == "0"

        page.select_option("#kind", "completion")
        page.fill("#max-bytes", "300")
        page.fill("#prompt", "def parse(self, ")
        page.click("#send")
        # Streamed: text is on the page while the generation is still running.
        page.wait_for_function("""() => {
            const m = document.querySelector('.msg.assistant');
            return m && m.dataset.state === 'streaming' && m.querySelector('.text').textContent.length > 0; }""",
                               timeout=60000)
        page.wait_for_selector(".msg.assistant[data-state=done]", timeout=120000)
        text = page.locator(".msg.assistant .text").inner_text()
        assert len(text.encode()) > 0 and page.locator(".msg.assistant").get_attribute("data-finish") == "length"

        # The stats poll catches up: bytes generated, cache hit rate, a batch size, heatmap cells lit.
        page.wait_for_function("() => Number(document.querySelector('#heatmap').dataset.total) > 0", timeout=10000)
        page.wait_for_function("() => Number(document.querySelector('#m-bytes').textContent) >= 300", timeout=10000)
        assert page.locator("#m-hit").inner_text().endswith("%")
        assert page.locator("#m-batch").inner_text() != "–"
        lit = page.locator("#heatmap .cell[data-count]:not([data-count='0'])").count()
        assert lit >= 1

        # Memory browser: the prompt's bytes are memories now; search, open one, see its priority and links.
        page.fill("#memory-query", "def parse(self, ")
        page.click("#memory-form button")
        page.wait_for_selector("#memory-results li")
        page.locator("#memory-results li").first.click()
        page.wait_for_selector("#memory-head")
        head = page.locator("#memory-head").inner_text()
        assert "priority" in head and "links" in head
        page.wait_for_timeout(1100)  # one more stats poll, so the screenshot shows a rate
        if os.environ.get("M3EDGE_SCREENSHOT"):
            page.screenshot(path=os.environ["M3EDGE_SCREENSHOT"], full_page=True)
        assert not errors, errors
        assert all(u.startswith(f"http://127.0.0.1:{s.port}/") for u in requests)  # nothing from a CDN
    finally:
        assert s.stop()
