"""The README's picture of the Explore tab: a real calibration of SmolLM2 driven in Chromium, a few splits, a shot.

    nice -n 5 python bench/screenshots/explore_screenshot.py [--out assets/explore.png]

Wanda three-tier on the embedded SmolLM2-135M-Instruct (8 calibration windows x 256 tokens of the local WikiText-2,
the rest of the form as it opens), Calibrate (which estimates its split), the 2:4 and unstructured 50% references,
then the dense-blocks slider released at a few positions; every estimate is masks only, on 4 test windows x 256
tokens. The shot is the whole page, 1500 px wide (--column: the results column only).
Needs Debian's Chromium and the playwright package (as tests/test_browser.py); a few minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.common import DEFAULT_DATA  # noqa: E402
from bench.screenshots.dashboard_shot import ARGS, CHROMIUM, served_dashboard, use_local_text  # noqa: E402

STATUS_OK = "() => document.querySelector('#xs-status .banner.ok')?.innerText || ''"
LONG = 1_800_000


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="assets/explore.png")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--windows", type=int, default=4)
    p.add_argument("--dense", type=float, nargs="*", default=[0.10, 0.20, 0.50],
                   help="where the dense-blocks slider is released after the calibrated split (fractions of its track)")
    p.add_argument("--no-references", action="store_true")
    p.add_argument("--method", default="Wanda |W|·‖X‖", help="the method's radio label; '' keeps the form's")
    p.add_argument("--sparsegpt", action="store_true", help="also the SparseGPT references (exact walks)")
    p.add_argument("--width", type=int, default=1500, help="the browser window's width in px")
    p.add_argument("--column", action="store_true", help="only the results column, not the whole page")
    a = p.parse_args()
    from playwright.sync_api import sync_playwright

    t0 = time.time()
    with served_dashboard("explore-shot-runs-") as url:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": a.width, "height": 1000})
            page.goto(url)
            page.wait_for_selector("#layer-heatmap")
            if a.method:
                page.get_by_label(a.method, exact=True).check()
            use_local_text(page, a.data, a.samples, a.tokens)

            page.get_by_role("tab", name="Explore").click()
            page.get_by_label("Estimate windows").fill(str(a.windows))
            page.get_by_label("Tokens per window").fill(str(a.tokens))
            page.locator("#xs-calibrate").click()
            page.wait_for_function("() => document.querySelector('#xs-calib-note')?.innerText"
                                   ".includes('MiB of statistics') || document.querySelector('#xs-status .banner.err')",
                                   timeout=LONG)
            fail_if_error(page, a.out)
            say(t0, page.inner_text("#xs-calib-note"))
            last = wait_ok(page, "", a.out)
            say(t0, last)

            if not a.no_references:
                page.get_by_role("button", name="Add references (2:4, unstructured 50%)").click()
                page.wait_for_function(f"() => ({STATUS_OK})().includes('unstructured') || "
                                       "document.querySelector('#xs-status .banner.err')", timeout=LONG)
                fail_if_error(page, a.out)
                last = page.inner_text("#xs-status")
                say(t0, last)

            if a.sparsegpt:
                page.locator("#xs-strong").click()
                page.wait_for_function("() => (document.querySelector('#xs-points')?.innerText.match(/exact "
                                       "reference/g) || []).length >= 2 || document.querySelector("
                                       "'#xs-status .banner.err')", timeout=LONG)
                fail_if_error(page, a.out)
                last = page.inner_text("#xs-status")
                say(t0, last)

            for fraction in a.dense:
                slider = page.locator("#xs-dense input[type=range]")
                slider.scroll_into_view_if_needed()
                box = slider.bounding_box()
                page.mouse.click(box["x"] + box["width"] * fraction, box["y"] + box["height"] / 2)
                last = wait_ok(page, last, a.out)
                say(t0, last)

            print(page.inner_text("#xs-estimate"), flush=True)
            print(page.inner_text("#xs-summary"), flush=True)
            print(page.inner_text("#xs-points"), flush=True)
            page.mouse.move(5, 5)
            # a full-page shot is one tall window: the sticky Run / Stop bar would land mid-form
            page.add_style_tag(content="#run-buttons { position: static !important; }")
            page.wait_for_timeout(1000)
            if a.column:
                page.locator("#results-column").screenshot(path=a.out)
            else:
                page.screenshot(path=a.out, full_page=True)
            browser.close()
    say(t0, f"wrote {a.out}")


def wait_ok(page, previous: str, out: str) -> str:
    """Wait for the next estimate's ok banner (a text other than `previous`) and return its text."""
    page.wait_for_function(f"(prev) => {{ const t = ({STATUS_OK})(); return (t && t !== prev) || "
                           "document.querySelector('#xs-status .banner.err'); }", arg=previous, timeout=LONG)
    fail_if_error(page, out)
    return page.inner_text("#xs-status")


def fail_if_error(page, out: str) -> None:
    if page.locator("#xs-status .banner.err").count():
        page.screenshot(path=out + ".failed.png", full_page=True)
        sys.exit(f"{page.inner_text('#xs-status')}\nthe page is in {out}.failed.png")


def say(t0: float, text: str) -> None:
    print(f"[{time.time() - t0:6.1f} s] {text}", flush=True)


if __name__ == "__main__":
    main()
