"""The Search panel in a real browser, on a tiny model: Calibrate, Start a 6-trial search, trials stream into the
points table and the Pareto view, Stop mid-way keeps the finished trials, a restarted server lists the search and
reopens its front, a click on a trial opens its maps.

Needs Debian's Chromium and playwright (see tests/test_browser.py); skipped, saying why, when either is missing."""
from __future__ import annotations

import os
import shutil
import socket

import pytest

from conftest import CHROMIUM, chromium_page, slow_down_estimates

playwright = pytest.importorskip("playwright.sync_api", reason="playwright missing: pip install playwright")
pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not (os.path.exists(CHROMIUM) or shutil.which("chromium")),
                                 reason=f"no Chromium at {CHROMIUM}: apt-get install -y chromium"),
              pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")]
# rows of the points table whose kind is a search trial (Gradio's table draws rows as cells, not <tr>)
SEARCH_ROWS = "() => (document.querySelector('#xs-points')?.innerText.match(/search trial/g) || []).length"


def _serve(runs: str):
    from app import Settings, build_demo
    from components.server import launch_options
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo = build_demo(Settings(runs_dir=runs))
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True, **launch_options())
    return demo, f"http://127.0.0.1:{port}/"


@pytest.fixture
def slow_estimates(monkeypatch):
    """Each estimate 1 s longer (the server runs in this process): Stop mid-search must not race the machine."""
    slow_down_estimates(monkeypatch, 1.0)


def _calibrate(page, tiny_llama_dir):
    page.get_by_label("…or a hub id").fill(str(tiny_llama_dir))
    if not page.get_by_label("Samples").first.is_visible():
        page.get_by_text("Calibration data", exact=True).click()
    page.get_by_label("Samples").fill("4")
    page.get_by_label("Tokens per sample").fill("64")
    page.get_by_role("tab", name="Explore").click()
    page.get_by_label("Tokens per window").fill("32")
    page.get_by_label("Estimate windows").fill("2")
    page.locator("#xs-calibrate").click()
    page.wait_for_function("() => document.querySelector('#xs-calib-note')?.innerText.includes('MiB of statistics')",
                           timeout=120_000)
    page.wait_for_function("() => document.querySelector('#xs-status .banner.ok')", timeout=60_000)


def test_search_streams_stops_survives_a_restart_and_opens_maps(tiny_llama_dir, tmp_path, slow_estimates):
    os.environ["SPARSITY_CACHE"] = str(tmp_path / "baseline-cache")
    runs = str(tmp_path / "runs")
    demo, url = _serve(runs)
    with chromium_page() as page:
        try:
            page.goto(url)
            _calibrate(page, tiny_llama_dir)
            page.locator("#xs-search-trials input").fill("6")
            page.locator("#xs-search-start").click()
            page.wait_for_function(f"() => ({SEARCH_ROWS})() >= 1", timeout=60_000)  # the first trial streamed in
            page.wait_for_function(f"() => ({SEARCH_ROWS})() >= 2", timeout=60_000)
            page.locator("#xs-search-stop").click()
            page.wait_for_function("() => document.querySelector('#xs-search-status')?.innerText.includes('stopped')",
                                   timeout=60_000)
            status = page.inner_text("#xs-search-status")
            kept = page.evaluate(SEARCH_ROWS)
            assert 2 <= kept < 6 and "all kept in the study" in status
            # the Pareto view gets the same updates as the table; Plotly draws them asynchronously, so wait for them
            page.wait_for_function("(kept) => document.querySelectorAll('#xs-pareto .scatterlayer .trace .points path')"
                                   ".length >= kept", arg=kept, timeout=10_000)

            demo.close()  # the server restarts on the same run store
            demo, url = _serve(runs)
            page.goto(url)
            page.get_by_role("tab", name="Explore").click()
            page.locator("#xs-search-past input").click()
            page.get_by_role("option").first.click()
            page.wait_for_function("() => document.querySelector('#xs-search-status')?.innerText.includes('on the "
                                   "front')", timeout=30_000)
            assert page.evaluate(SEARCH_ROWS) == kept
            assert "✓" in page.inner_text("#xs-points")

            # a click on a trial of the reopened search opens its maps (after calibrating as it did: a cache hit)
            _calibrate(page, tiny_llama_dir)
            marker = page.locator("#xs-pareto .scatterlayer .trace:nth-child(3) .points path").first
            marker.scroll_into_view_if_needed()
            b = marker.bounding_box()
            page.mouse.move(b["x"] + b["width"] / 2, b["y"] + b["height"] / 2)
            page.wait_for_timeout(300)
            page.mouse.click(b["x"] + b["width"] / 2, b["y"] + b["height"] / 2)
            page.wait_for_function("() => document.querySelector('#xs-estimate')?.innerText.includes('point #')",
                                   timeout=30_000)
            assert not page.errors, page.errors
        finally:
            demo.close()
