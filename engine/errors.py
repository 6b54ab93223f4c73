"""Errors a user can cause. The CLI and the dashboard show `str(err)` as one line; anything else is a bug."""


class UserError(Exception):
    """Bad input or an environment problem the user can fix; the message says how."""


class SpecError(UserError, ValueError):
    """A pruning specification that cannot be run (ratios, N:M, block size, K, ...)."""


class ModelLoadError(UserError):
    """The model could not be found, downloaded, read, or is not a causal LM."""


class DataError(UserError):
    """A text source is missing, unreadable, empty or too short."""


class Cancelled(Exception):
    """Raised inside the layer walk when the caller's cancel flag is set (between layers)."""


def excerpt(value, limit: int = 120) -> str:
    """A short, escaped quote of user input for an error message: repr() of at most `limit` characters, and the
    full length when it was cut, so a 20 MB id is never echoed back."""
    text = str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text)} characters)"


def run_command(body, args, interrupted: str) -> int:
    """A command line's outer frame: `body(args)`'s exit status; a user's error is one `error:` line and status 2,
    Ctrl-C one line saying what was kept (`interrupted`) and status 130. Never a traceback for either."""
    import sys

    try:
        return body(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"error: interrupted; {interrupted}", file=sys.stderr)
        return 130
