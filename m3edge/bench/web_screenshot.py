"""docs/img/web.png: the web page of `m3edge serve BUNDLE` in headless Chromium, mid-generation.

    python -m m3edge.bench.web_screenshot BUNDLE [-o docs/img/web.png]
"""

import argparse
import tempfile
import time
from pathlib import Path

from m3edge.bench.server_hardening import Server

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def main():
    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("-o", "--output", default="docs/img/web.png")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        s = Server(args.bundle, Path(d) / "mem")
        try:
            with sync_playwright() as p:
                b = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
                page = b.new_page(viewport={"width": 1400, "height": 760})
                page.goto(f"http://127.0.0.1:{s.port}/")
                page.wait_for_selector("#heatmap .cell")
                page.select_option("#kind", "completion")
                for prompt, n in (("import os\nimport sys\n\n\ndef main(", "200"),
                                  ("class Parser:\n    def __init__(self, ", "600")):
                    page.fill("#max-bytes", n)
                    page.fill("#prompt", prompt)
                    page.click("#send")
                    if n == "200":
                        page.wait_for_selector(".msg.assistant[data-state=done]", timeout=120000)
                page.fill("#memory-query", "import sys")
                page.click("#memory-form button")
                page.wait_for_selector("#memory-results li")
                page.locator("#memory-results li").first.click()
                page.wait_for_selector("#memory-head")
                time.sleep(2.5)  # mid-generation: the rates are live
                page.screenshot(path=args.output)
                b.close()
        finally:
            s.stop()


if __name__ == "__main__":
    main()
