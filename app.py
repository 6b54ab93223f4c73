"""The dashboard: set up a pruning run, watch it layer by layer, read where the zeros went, recover it with a masked
fine-tune, compare runs, reopen past ones.

    python app.py [--port 7860] [--host 127.0.0.1] [--share] [--public] [--runs_dir DIR] [--trust_remote_code]

`--public`, SPARSITY_PUBLIC=1 or a Hugging Face Space (SPACE_ID set; only an explicit SPARSITY_PUBLIC=0/false/no/off
turns it off there, any other value refuses to start) serve strangers under components/policy.py: hub models only,
named texts, no saving, capped work, a bounded run store. The server prints its mode at start; Gradio's usage
analytics are off unless GRADIO_ANALYTICS_ENABLED turns them on; the upload route is closed (the app takes no
files). Every run is recorded in the run store (engine/io/run_store.py), so the Past runs tab lists it after a restart.

The page is components/page.py: a thin layout of one module per part (setup_form.py, results_tab.py,
recover_tab.py, compare_tab.py, past_runs_tab.py, sweep_tab.py, export_tab.py; runner.py streams a job), each its
widgets and then its listeners, which call the engine or a figure builder. `build_demo(Settings(...))` makes a
page; the module attribute `demo` is the one built from the environment (what `gradio app.py` and a Space ask for).
"""
from __future__ import annotations

import argparse
import sys

import gradio as gr

from components.page import Page
from components.server import Settings, launch_options
from engine.errors import UserError

__all__ = ["Page", "Settings", "build_demo", "launch_options", "main"]


def build_demo(settings: Settings | None = None) -> gr.Blocks:
    return Page(settings or Settings.from_env()).demo


def __getattr__(name):
    """`app.demo`, built from the environment on first use (`gradio app.py`, a Space, tests/test_browser.py)."""
    if name == "demo":
        globals()["demo"] = build_demo()
        return globals()["demo"]
    raise AttributeError(f"module 'app' has no attribute {name!r}")


def main(argv=None):
    ap = argparse.ArgumentParser(description="LLM sparsity explorer (Gradio dashboard)")
    ap.add_argument("--port", type=int, default=None, help="port (default: $GRADIO_SERVER_PORT or 7860)")
    ap.add_argument("--host", default=None, help="address to bind (default 127.0.0.1; 0.0.0.0 to serve a network)")
    ap.add_argument("--share", action="store_true", help="make a temporary public gradio.live link (off by default)")
    ap.add_argument("--public", action="store_true",
                    help="serve strangers: hub models only, named texts, no saving, capped work (also "
                         "SPARSITY_PUBLIC=1; on by default on a Hugging Face Space)")
    ap.add_argument("--runs_dir", default=None,
                    help="the run store (default: $SPARSITY_RUNS or ~/.cache/sparsity-explorer/runs)")
    ap.add_argument("--trust_remote_code", action="store_true",
                    help="let models run their repository's own code (also SPARSITY_TRUST_REMOTE_CODE=1); "
                         "off by default")
    args = ap.parse_args(argv)
    try:
        settings = Settings.from_env(public=args.public, trust_remote_code=args.trust_remote_code,
                                     runs_dir=args.runs_dir)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(settings.describe(), flush=True)
    build_demo(settings).launch(server_name=args.host, server_port=args.port, share=args.share, **launch_options())
    return 0


if __name__ == "__main__":
    sys.exit(main())
