"""Where agentdistill keeps caches (converted model checkpoints, env metadata), and how files there
are written."""

import os
import uuid
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("AGENTDISTILL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "agentdistill"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write a file so that readers see the old content or the new, never a part: a uniquely named
    sibling is written, then renamed over it (safe with concurrent writers in threads or processes)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    if isinstance(data, str):
        tmp.write_text(data)
    else:
        tmp.write_bytes(data)
    tmp.replace(path)
