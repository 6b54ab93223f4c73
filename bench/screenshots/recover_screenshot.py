"""The README's picture of the Recover tab: a real run on SmolLM2 driven in Chromium, then Recover, then a shot.

    nice -n 19 python bench/screenshots/recover_screenshot.py [--out assets/recover-tab.png] [--steps 30]

SparseGPT 2:4 on the embedded SmolLM2-135M-Instruct (8 calibration windows x 512 tokens of the local WikiText-2,
perplexity on 10 test windows, dense and magnitude baselines), then a masked full fine-tune from the Recover tab.
Needs Debian's Chromium and the playwright package (as tests/test_browser.py); about 5 minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.common import DEFAULT_DATA  # noqa: E402
from bench.screenshots.dashboard_shot import ARGS, CHROMIUM, served_dashboard, use_local_text  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="assets/recover-tab.png")
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--lr", default="1e-4")
    a = p.parse_args()
    from playwright.sync_api import sync_playwright

    with served_dashboard("recover-shot-runs-") as url:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            page.goto(url)
            page.wait_for_selector("#layer-heatmap")
            page.get_by_label("SparseGPT (OBS update)").check()
            page.get_by_label("N:M", exact=True).check()
            use_local_text(page, a.data, 8, 512)
            page.get_by_label("Windows").fill("10")
            page.get_by_role("button", name="Run", exact=True).click()
            page.wait_for_selector("#status .banner.ok, #status .banner.err", timeout=1_800_000)
            print(page.inner_text("#status"), flush=True)
            if page.locator("#status .banner.err").count():
                page.screenshot(path=a.out + ".failed.png", full_page=True)
                sys.exit(f"the run failed; the page is in {a.out}.failed.png")

            page.get_by_role("tab", name="Recover").click()
            page.get_by_label("Steps", exact=True).last.fill(str(a.steps))
            page.get_by_label("Learning rate").last.fill(a.lr)
            page.locator("#recover-button").click()
            page.wait_for_function("() => document.querySelector('#status')?.innerText.includes('Recovered')",
                                   timeout=1_800_000)
            print(page.inner_text("#status"), flush=True)
            page.mouse.move(5, 5)
            page.wait_for_timeout(800)
            page.locator("#results-column").screenshot(path=a.out)
            browser.close()
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
