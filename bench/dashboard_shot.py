"""What the README's dashboard screenshots share: the page served on a free local port, Debian's Chromium, a
Gradio dropdown picked by its label (bench/recover_screenshot.py, bench/explore_screenshot.py)."""
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


def choose(page, label: str, option: str) -> None:
    """Pick `option` in the Gradio dropdown labelled `label`."""
    page.get_by_label(label, exact=True).click()
    page.get_by_role("option", name=option).click()
