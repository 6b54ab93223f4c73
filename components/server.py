"""What the person running the server decides (Settings: nothing a page sends can change it), and how every page is
launched (launch_options: the look, and no uploads)."""
from __future__ import annotations

import os
from dataclasses import dataclass

from engine.io.run_store import StoreBudget

from . import policy
from .layout import CSS_PATH, theme


@dataclass(frozen=True)
class Settings:
    """What the person running the server decides; nothing a page sends can change it."""
    public: bool = False
    trust_remote_code: bool = False
    runs_dir: str | None = None             # the run store; None: $SPARSITY_RUNS or ~/.cache/sparsity-explorer/runs
    limits: policy.Limits | None = None     # caps on a run's work (public) and model size (whenever set)
    max_waiting: int = 8                    # runs waiting for the engine behind the running one; more are refused
    per_visitor: int | None = None          # one visitor's jobs in the engine's line (None: 2 public, no cap local)
    engine_quota_s: float | None = None     # engine seconds lately (halving each minute) beyond which a visitor
                                            # yields to the others (components/jobs.py; None: 30 public, none local)
    behind_proxy: bool = False              # visitors are the last X-Forwarded-For entry (a Space's proxy sets it)
    queue_size: int | None = None           # Gradio's queue of events beyond that (None: 16 public, 64 local)
    analytics: bool = False                 # Gradio's usage analytics (a third party): only if the owner says so
    store_budget: StoreBudget | None = None  # bounds on the run store (None: StoreBudget() public, none local)

    def __post_init__(self):
        if self.public and self.limits is None:  # a public server is never without its caps
            object.__setattr__(self, "limits", policy.PUBLIC_LIMITS)
        if self.public and self.store_budget is None:  # strangers write one record per request
            object.__setattr__(self, "store_budget", StoreBudget())
        if self.queue_size is None:
            object.__setattr__(self, "queue_size", 16 if self.public else 64)
        if self.public and self.per_visitor is None:  # one stranger's many tabs share one visitor's turns
            object.__setattr__(self, "per_visitor", 2)
        if self.public and self.engine_quota_s is None:  # about a third of the engine, held for a while
            object.__setattr__(self, "engine_quota_s", 30.0)

    @classmethod
    def from_env(cls, env=None, public: bool = False, trust_remote_code: bool = False,
                 runs_dir: str | None = None) -> "Settings":
        """Command-line choices, or else the environment's (SPARSITY_PUBLIC, SPACE_ID, SPARSITY_TRUST_REMOTE_CODE,
        SPARSITY_BEHIND_PROXY, GRADIO_ANALYTICS_ENABLED). A switch set to anything but an on or off value raises
        UserError."""
        env = os.environ if env is None else env
        public = policy.public_from_env(env) or public
        return cls(public=public, trust_remote_code=policy.trust_remote_code_from_env(env) or trust_remote_code,
                   runs_dir=runs_dir, analytics=policy.analytics_from_env(env),
                   behind_proxy=policy.behind_proxy_from_env(env))

    def describe(self) -> str:
        """One line for the server's log at start: which mode, and what that means."""
        if self.public:
            mode = (f"PUBLIC mode: hub models only (up to {self.limits.max_params / 1e9:g}B parameters), named texts, "
                    "no saving, capped work, a bounded run store")
        else:
            mode = "LOCAL mode: local paths and saving allowed, no caps (use --public to serve strangers)"
        return (f"Sparsity explorer: {mode}; models' own code {'allowed' if self.trust_remote_code else 'off'}; "
                f"usage analytics {'on' if self.analytics else 'off'}")

    def note(self) -> str:
        """What this server allows, as a line of Markdown under the form."""
        code = ("Models' own code (trust_remote_code) is **allowed** on this server." if self.trust_remote_code else
                "Models' own code (trust_remote_code) is off; whoever runs the server can allow it "
                "(`--trust_remote_code` or SPARSITY_TRUST_REMOTE_CODE=1).")
        if not self.public:
            return code
        lim = self.limits
        return (f"Public server: hub models up to {lim.max_params / 1e9:g}B parameters (safetensors weights only), "
                f"named texts, at most {lim.nsamples} samples of {lim.seqlen} tokens and {lim.eval_windows} evaluation "
                f"windows, no saving. {code}")


class RefuseUploads:
    """ASGI middleware: the app takes no files, so Gradio's upload route answers 403 instead of storing what a
    stranger sends (and serving it back)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].rstrip("/").endswith("/upload"):
            await send({"type": "http.response.start", "status": 403,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
            await send({"type": "http.response.body", "body": b"this server takes no uploads\n"})
            return
        await self.app(scope, receive, send)


def launch_options() -> dict:
    """Blocks.launch keyword arguments of every launch: the look, and no uploads (max_file_size 0, no route)."""
    from starlette.middleware import Middleware
    return dict(theme=theme(), css_paths=[CSS_PATH], footer_links=["api", "gradio"], max_file_size=0,
                app_kwargs={"middleware": [Middleware(RefuseUploads)]})
