"""What the README's dashboard screenshots share: the page served on a free local port, Debian's Chromium, a
Gradio dropdown picked by its label, the form pointed at local text (bench/screenshots/recover_screenshot.py,
bench/screenshots/explore_screenshot.py, bench/checks/explore_browser.py, bench/checks/explore_progressive.py)."""
from __future__ import annotations

import socket
import tempfile
from contextlib import contextmanager

from components.page import Page
from components.server import Settings, launch_options

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@contextmanager
def served_dashboard(runs_prefix: str):
    """The dashboard on 127.0.0.1 with a fresh run store; yields its URL, closes it on exit."""
    page_app = Page(Settings(runs_dir=tempfile.mkdtemp(prefix=runs_prefix)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    page_app.demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
                         **launch_options())
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        page_app.demo.close()


def use_local_text(page, data: str, samples: int, tokens: int) -> None:
    """Point the form's calibration and evaluation at the local text `data` (a file or folder), `samples` x
    `tokens` calibration windows; checks that the evaluation path took."""
    page.get_by_text("Calibration data").click()
    choose(page, "Source", "local file / folder ↓")
    page.get_by_label("Path (.txt").first.fill(data)
    page.get_by_label("Samples").fill(str(samples))
    page.get_by_label("Tokens per sample").fill(str(tokens))
    page.get_by_text("Evaluation", exact=True).click()
    choose(page, "Perplexity on", "local file / folder ↓")
    paths = page.get_by_label("Path (.txt")
    page.wait_for_function("() => [...document.querySelectorAll('label')].filter(l => "
                           "l.innerText.startsWith('Path (.txt') && l.offsetParent).length >= 2")
    paths.last.fill(data)
    page.wait_for_timeout(300)
    assert paths.last.input_value() == data, "the evaluation path did not take"


def explore_tab_page(browser, url: str, data: str, samples: int, tokens: int, windows: int, height: int = 1000):
    """A new page of the dashboard at `url` on its Explore tab, the form on the local text `data` (use_local_text)
    and the estimate set to `windows` windows of `tokens` tokens."""
    page = browser.new_page(viewport={"width": 1500, "height": height})
    page.goto(url)
    page.wait_for_selector("#layer-heatmap")
    use_local_text(page, data, samples, tokens)
    page.get_by_role("tab", name="Explore").click()
    page.get_by_label("Estimate windows").fill(str(windows))
    page.get_by_label("Tokens per window").fill(str(tokens))
    return page


def choose(page, label: str, option: str) -> None:
    """Pick `option` in the Gradio dropdown labelled `label`."""
    page.get_by_label(label, exact=True).click()
    page.get_by_role("option", name=option).click()
