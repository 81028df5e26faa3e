"""Where agentdistill keeps caches (converted model checkpoints, env metadata)."""

import os
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("AGENTDISTILL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "agentdistill"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
