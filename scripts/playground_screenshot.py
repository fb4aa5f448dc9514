"""Screenshot the playground page of a running gateway: docs/playground.png in the README.

    .venv/bin/python scripts/playground_screenshot.py http://127.0.0.1:8000 \\
        "glioma stem cells survival" docs/playground.png

Types the query, presses Enter, waits for the results and saves the top of the page (the form,
the answer's summary and timings, the first results). It drives Debian's chromium
(`apt-get install chromium`, or CHROMIUM=/path/to/chrome) through Playwright (the `dev`
extra), as the browser tests do. `pngquant --quality 70-95` makes the file three times smaller.
"""

from __future__ import annotations

import os
import sys

from playwright.sync_api import sync_playwright

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def main(url: str, query: str, out: str, width: int = 1000, height: int = 1140) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(url.rstrip("/") + "/")
        page.fill("#query", query)
        page.press("#query", "Enter")
        page.wait_for_selector(
            "#answer[aria-busy=false]:not([hidden]), #error:not([hidden])", timeout=60_000
        )
        if page.is_visible("#error"):
            sys.exit(f"the search failed: {page.inner_text('#error')}")
        page.screenshot(path=out)
        browser.close()
    print(f"wrote {out}")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
