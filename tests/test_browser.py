"""The page in a real browser: Run on a tiny model, the heatmap and tier map render, a heatmap click opens a matrix.

Needs Debian's Chromium (`apt-get install -y chromium`) and the Python package playwright (`pip install
playwright`; never `playwright install`, which downloads a browser). Skipped, saying why, when either is missing.
Saves a screenshot under pytest's tmp dir; with SPARSITY_SCREENSHOT=path it writes there (the README's picture
was made with SPARSITY_SCREENSHOT=assets/screenshot.png), so a test run never modifies the repository.
"""
from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

from conftest import CHROMIUM, chromium_page

SCREENSHOT = os.environ.get("SPARSITY_SCREENSHOT")

playwright = pytest.importorskip("playwright.sync_api", reason="playwright missing: pip install playwright")
pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not (os.path.exists(CHROMIUM) or shutil.which("chromium")),
                                 reason=f"no Chromium at {CHROMIUM}: apt-get install -y chromium"),
              pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning")]  # raised inside gradio


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    os.environ["SPARSITY_CACHE"] = str(tmp_path_factory.mktemp("baseline-cache"))
    import app
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app.demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
                    **app.launch_options())
    yield f"http://127.0.0.1:{port}/"
    app.demo.close()


@pytest.fixture(scope="module")
def page(url):
    with chromium_page() as page:
        page.goto(url)
        page.wait_for_selector("#layer-heatmap")
        yield page


def test_run_renders_heatmap_and_tier_map_and_a_click_opens_a_matrix(page, tiny_llama_dir, tmp_path):
    page.get_by_label("…or a hub id").fill(str(tiny_llama_dir))
    page.get_by_text("Calibration data").click()
    page.get_by_label("Samples").fill("4")
    page.get_by_label("Tokens per sample").fill("64")
    page.get_by_text("Evaluation", exact=True).click()
    page.get_by_label("Windows").fill("4")
    page.get_by_role("button", name="Run", exact=True).click()

    page.wait_for_selector("#status .banner.ok", timeout=90_000)
    assert "realised sparsity" in page.inner_text("#status")
    page.wait_for_selector("#layer-heatmap .js-plotly-plot .heatmaplayer image, #layer-heatmap .js-plotly-plot .hm")
    page.wait_for_selector("#tier-map .js-plotly-plot .legend")
    assert "self_attn.q_proj" in page.locator("#tier-map .gtitle").text_content()
    assert page.locator("#overview .card").count() == 5

    # hover then click the bottom-right cell: layer 1, mlp.down_proj
    page.locator("#layer-heatmap").scroll_into_view_if_needed()
    box = page.locator("#layer-heatmap .nsewdrag").first.bounding_box()
    x, y = box["x"] + box["width"] * 0.93, box["y"] + box["height"] * 0.75
    page.mouse.move(x, y)
    page.wait_for_timeout(300)
    page.mouse.click(x, y)
    page.wait_for_function(
        "() => (document.querySelector('#tier-map .gtitle') || {}).textContent?.includes('layer 1 · mlp.down_proj')",
        timeout=15_000)
    page.mouse.move(5, 5)  # no tooltip in the picture
    # a full-page shot keeps the 1000 px viewport for sticky elements: put the progress bar and Run/Stop in place
    page.add_style_tag(content="#progress, #run-buttons { position: static !important; }")
    page.wait_for_timeout(500)  # let Plotly finish drawing before the picture
    shot = Path(SCREENSHOT) if SCREENSHOT else tmp_path / "screenshot.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert not page.errors, page.errors


def test_recover_tab_draws_the_loss_curve_as_it_trains(page, tiny_llama_dir, tmp_path):
    """After the run above: Recover fine-tunes it, the loss curve appears while it trains, then before / after."""
    page.get_by_role("tab", name="Recover").click()
    page.get_by_label("Steps", exact=True).last.fill("12")
    page.get_by_label("Learning rate").last.fill("0.001")
    page.locator("#recover-button").click()
    page.wait_for_selector("#loss-curve .js-plotly-plot .scatterlayer .trace", timeout=90_000)
    page.wait_for_function("() => document.querySelector('#status')?.innerText.includes('Recovered')",
                           timeout=90_000)
    assert "12 of 12 fine-tune steps" in page.inner_text("#status")
    assert "pruned + fine-tune" in page.inner_text("#recover-note")
    assert page.locator("#loss-curve .js-plotly-plot .scatterlayer .trace").count() == 2  # train and held-out
    _shot_results_column(page, Path(os.environ.get("SPARSITY_RECOVER_SCREENSHOT") or tmp_path / "recover-tab.png"))


def _shot_results_column(page, shot: Path) -> None:
    """A picture of the results column with the pointer out of the way; the page logged no error."""
    page.mouse.move(5, 5)
    page.wait_for_timeout(500)
    page.locator("#results-column").screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    assert not page.errors, page.errors


def _show_field(page, label: str, accordion: str):
    if not page.get_by_label(label).first.is_visible():
        page.get_by_text(accordion, exact=True).click()


# the Pareto view's marker of the point labelled `label`: [its trace's place among the scatter traces, its place in
# the trace], both counted from 1 as CSS's nth-of-type counts
POINT_OF = """(label) => {
    const data = document.querySelector('#xs-pareto .js-plotly-plot').data;
    const traces = data.filter(t => (t.type ?? 'scatter') === 'scatter');
    for (let t = 0; t < traces.length; t++) {
        const i = (traces[t].text ?? []).indexOf(label);
        if (i >= 0) return [t + 1, i + 1];
    }
    return null;
}"""


def _stable_box(page, selector: str, tries: int = 5) -> dict:
    """The bounding box of the first element matching `selector`, scrolled into view. Plotly redraws a figure by
    replacing its nodes, so a later update of the same figure (the estimate's last window, the points table) can
    detach the element between finding and scrolling: find it again then."""
    for attempt in range(tries):
        try:
            marker = page.locator(selector).first
            marker.scroll_into_view_if_needed(timeout=5_000)
            box = marker.bounding_box()
            if box is not None:
                return box
        except playwright.Error:
            if attempt == tries - 1:
                raise
        page.wait_for_timeout(300)
    raise AssertionError(f"{selector} has no box")


def test_explore_a_moved_slider_redraws_the_heatmap_without_run(page, tiny_llama_dir, tmp_path):
    """Explore: calibrate a tiny model, release the dense-ratio slider, and the heatmap changes with no Run press;
    a click on the first point of the Pareto view opens its maps again."""
    page.get_by_label("…or a hub id").fill(str(tiny_llama_dir))
    _show_field(page, "Samples", "Calibration data")
    page.get_by_label("Samples").fill("4")
    page.get_by_label("Tokens per sample").fill("64")
    page.get_by_role("tab", name="Explore").click()
    page.get_by_label("Tokens per window").fill("64")
    page.locator("#xs-calibrate").click()
    page.wait_for_function("() => document.querySelector('#xs-calib-note')?.innerText.includes('MiB of statistics')",
                           timeout=120_000)
    page.wait_for_function("() => document.querySelector('#xs-heatmap .js-plotly-plot')?.data?.[0]?.z",
                           timeout=30_000)
    page.wait_for_function("() => document.querySelector('#xs-estimate')?.innerText.includes('windows')",
                           timeout=60_000)
    z_of = "() => JSON.stringify(document.querySelector('#xs-heatmap .js-plotly-plot').data[0].z)"
    before = page.evaluate(z_of)
    runs_before = page.inner_text("#status")

    slider = page.locator("#xs-dense input[type=range]")
    slider.scroll_into_view_if_needed()
    box = slider.bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.05, box["y"] + box["height"] / 2)  # dense -> ~0.05: more top-K
    page.wait_for_function(f"(before) => ({z_of})() !== before", arg=before, timeout=15_000)
    page.wait_for_function("() => document.querySelector('#xs-summary')?.innerText.includes('three-tier 0.0')",
                           timeout=15_000)
    assert page.inner_text("#status") == runs_before  # nothing ran: the Run banner is as it was
    # estimated: masks only, then with the form's OBS update (the last estimate; it may reorder the Pareto points)
    page.wait_for_function("() => document.querySelector('#xs-status .banner.ok')?.innerText.includes('with update')",
                           timeout=60_000)
    assert "wanda" in page.inner_text("#xs-points") or "three-tier" in page.inner_text("#xs-points")
    # a click on a point of the Pareto view re-opens that split's maps: #1, the split calibrated first, found by its
    # label (the traces' point order is not the points' numbers)
    trace, index = page.evaluate(POINT_OF, "#1")
    b = _stable_box(page, f"#xs-pareto .scatterlayer .trace:nth-of-type({trace}) .points path:nth-of-type({index})")
    page.mouse.move(b["x"] + b["width"] / 2, b["y"] + b["height"] / 2)
    page.wait_for_timeout(300)  # Plotly's hover picks the point first
    page.mouse.click(b["x"] + b["width"] / 2, b["y"] + b["height"] / 2)
    page.wait_for_function("() => document.querySelector('#xs-estimate')?.innerText.includes('point #1')",
                           timeout=30_000)
    assert "three-tier 0.0" not in page.inner_text("#xs-summary")
    _shot_results_column(page, Path(os.environ.get("SPARSITY_EXPLORE_SCREENSHOT") or tmp_path / "explore-tab.png"))
