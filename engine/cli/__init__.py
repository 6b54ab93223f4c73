"""The command lines: prune_cli.py (main.py, the Wanda scripts' flags), finetune_cli.py (finetune.py),
sweep_cli.py (--sweep), search_cli.py (--search), progressive_cli.py (the progressive schedule), console.py
(progress bars and summary lines they share)."""
from engine import lazy_exports

__getattr__ = lazy_exports(__name__, {
    "main": "prune_cli", "build_parser": "prune_cli", "spec_from_args": "prune_cli",
})
