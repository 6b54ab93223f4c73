"""A slider released while a first Calibrate is still calibrating, in Chromium, as a user would: the dashboard's form
as it opens, calibration --samples x --tokens of the local WikiText-2; once the first maps (from the first few
windows) are up, the dense-blocks slider is released at --position. Prints when the moved split's maps appeared (drawn
from the first windows, before the rest landed), when the rest landed, and the split and estimate shown at the end
(the moved one, re-planned and estimated on all windows); --shot saves the page as the moved split is drawn.

    python bench/checks/explore_progressive.py [--samples 16 --tokens 256 --position 0.3 --shot FILE.png]

Needs Debian's Chromium and the playwright package (as tests/test_browser.py).
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
from bench.screenshots.dashboard_shot import ARGS, CHROMIUM, explore_tab_page, served_dashboard  # noqa: E402

LONG = 1_800_000
NOTE = "document.querySelector('#xs-calib-note')?.innerText ?? ''"


def release_while_calibrating(data: str, samples: int, tokens: int, position: float, shot: str | None) -> None:
    from playwright.sync_api import sync_playwright

    with served_dashboard("explore-progressive-") as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = explore_tab_page(browser, url, data, samples, tokens, windows=2, height=1100)
        t0 = time.perf_counter()
        page.locator("#xs-calibrate").click()
        page.wait_for_function(f"() => ({NOTE}).includes('first maps from')", timeout=LONG)
        print(f"first windows calibrated after {time.perf_counter() - t0:.1f} s (with the model's load)", flush=True)
        slider = page.locator("#xs-dense input[type=range]")
        slider.scroll_into_view_if_needed()
        box = slider.bounding_box()
        page.mouse.click(box["x"] + box["width"] * position, box["y"] + box["height"] / 2)
        released = time.perf_counter()
        dense = page.locator("#xs-dense input[type=number]").input_value()
        page.wait_for_function("(d) => (document.querySelector('#xs-summary')?.innerText ?? '').includes("
                               "'three-tier ' + d + '/')", arg=dense, timeout=LONG)
        before_landing = "first maps from" in page.evaluate(f"() => {NOTE}")
        print(f"the moved split (dense {dense}) drawn {time.perf_counter() - released:.1f} s after the release, "
              f"{'before' if before_landing else 'after'} the other windows landed", flush=True)
        if shot:
            page.screenshot(path=shot)
        page.wait_for_function(f"() => ({NOTE}).includes('MiB of statistics') && !({NOTE}).includes('first maps')",
                               timeout=LONG)
        print(f"the other windows landed after {time.perf_counter() - t0:.1f} s", flush=True)
        page.wait_for_function("() => /with update|masks only: |banner err/.test("
                               "document.querySelector('#xs-status')?.innerHTML ?? '')", timeout=LONG)
        print("status:", page.inner_text("#xs-status"))
        print("summary:", page.inner_text("#xs-summary").splitlines()[0])
        browser.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--position", type=float, default=0.3, help="where on the dense slider's track to release")
    p.add_argument("--shot", default=None, help="a PNG of the page once the moved split is drawn")
    a = p.parse_args()
    release_while_calibrating(a.data, a.samples, a.tokens, a.position, a.shot)
