"""The Explore tab's round trip in Chromium, timed: a released dense-blocks slider -> the engine re-plans all 210
matrices of SmolLM2 -> the heatmap, the tier shares and the open tier map are redrawn. The stage "browser" of
bench/quality/explore.py (which writes the numbers into bench/RESULTS.md); alone:

    python bench/checks/explore_browser.py [--positions 0.1 0.2 ...]

Set-up: the dashboard served on a local port with the form as it opens (the best three-tier recipe, engine/spec.py)
except the calibration (--samples x --tokens of the local WikiText-2: the re-plan does not depend on it) and a
one-window estimate of --tokens tokens, which runs after the maps are drawn; each release waits for the previous
split's estimates (masks only, then with the update: the recipe has it) to finish; with --during_estimate (and an
estimate of --windows windows, long enough to be still streaming) each release comes 1 s after the previous maps,
while that split's estimates are still running, as a user dragging on would. The clock starts at the mouse release
and stops when the plot's data in the page differs from what it showed before (polled every animation frame).
Needs Debian's Chromium and the playwright package (as tests/test_browser.py).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.common import DEFAULT_DATA  # noqa: E402
from bench.screenshots.dashboard_shot import ARGS, CHROMIUM, explore_tab_page, served_dashboard  # noqa: E402

LONG = 1_800_000
PLOTS = ("#xs-heatmap", "#xs-shares", "#xs-tiermap")
DATA_OF = "(sel) => JSON.stringify(document.querySelector(sel + ' .js-plotly-plot')?.data ?? null)"
# the engine is idle: the split's last estimate ended (the form's recipe has the update: a second estimate, with it,
# follows the masks-only one; its status says "with update", or "masks only: <why not>"), or an error
IDLE = ("() => !!document.querySelector('#xs-status .banner.err') || "
        "/with update|masks only: /.test(document.querySelector('#xs-status .banner.ok')?.innerText ?? '')")


def round_trips(data: str, positions=(0.1, 0.3, 0.5, 0.2, 0.4), samples: int = 4, tokens: int = 128,
                windows: int = 1, during_estimate: bool = False) -> dict:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    trips = []
    with served_dashboard("explore-bench-runs-") as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = explore_tab_page(browser, url, data, samples, tokens, windows)
        t0 = time.perf_counter()
        page.locator("#xs-calibrate").click()
        page.wait_for_function("() => document.querySelector('#xs-calib-note')?.innerText.includes('MiB of "
                               "statistics') || document.querySelector('#xs-status .banner.err')", timeout=LONG)
        page.wait_for_function(IDLE, timeout=LONG)
        check(page)
        calibrated = time.perf_counter() - t0
        print(f"calibrated and first split estimated in {calibrated:.1f} s", flush=True)
        for fraction in positions:
            before = {sel: page.evaluate(DATA_OF, sel) for sel in PLOTS}
            slider = page.locator("#xs-dense input[type=range]")
            slider.scroll_into_view_if_needed()
            box = slider.bounding_box()
            streaming = not page.evaluate(IDLE)  # the previous split's estimates are still running
            start = time.perf_counter()
            page.mouse.click(box["x"] + box["width"] * fraction, box["y"] + box["height"] / 2)
            done = {}
            for sel in PLOTS:  # the heatmap first; a plot whose data did not change (same tiers) stays None
                try:
                    page.wait_for_function(f"([sel, prev]) => ({DATA_OF})(sel) !== prev", arg=[sel, before[sel]],
                                           polling="raf", timeout=60_000 if sel == PLOTS[0] else 10_000)
                    done[sel] = time.perf_counter() - start
                except PlaywrightTimeout:
                    if sel == PLOTS[0]:
                        raise
                    done[sel] = None
                if sel == PLOTS[0]:
                    status = page.inner_text("#xs-status")
            found = re.search(r"Re-planned in ([0-9.]+) s", status)
            if during_estimate:
                time.sleep(1.0)  # the estimate that follows has started: release again while it streams
            else:
                page.wait_for_function(IDLE, timeout=LONG)  # both estimates that follow, before the next release
                check(page)
            trips.append({"position": fraction, "estimate_running_at_release": streaming,
                          "heatmap_s": done[PLOTS[0]],
                          "all_maps_s": max(v for v in done.values() if v is not None),
                          "unchanged": [sel for sel, v in done.items() if v is None],
                          "replan_s": float(found.group(1)) if found else None,
                          "summary": page.inner_text("#xs-summary").splitlines()[0]})
            print(json.dumps(trips[-1]), flush=True)
        browser.close()
    from components.registry import FORM_SPEC
    return {"setup": f"Dashboard form as it opens ({FORM_SPEC.label()}), calibration "
                     f"{samples} x {tokens} tokens of the local valid.txt ({calibrated:.0f} s incl. the model's load "
                     f"and the first split), estimate {windows} window{'s' if windows > 1 else ''} x {tokens} tokens "
                     "after the maps; the dense-blocks slider released by a click on its track"
                     + (", 1 s after the previous maps, while that estimate streams" if during_estimate else
                        ", after the previous estimate ended") + ".", "calibrated_s": calibrated, "trips": trips}


def check(page) -> None:
    if page.locator("#xs-status .banner.err").count():
        raise SystemExit(page.inner_text("#xs-status"))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--positions", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.2, 0.4])
    p.add_argument("--windows", type=int, default=1, help="estimate windows (default 1)")
    p.add_argument("--during_estimate", action="store_true",
                   help="release 1 s after the previous maps, while its estimate still streams")
    a = p.parse_args()
    print(json.dumps(round_trips(a.data, a.positions, windows=a.windows, during_estimate=a.during_estimate),
                     indent=1))
