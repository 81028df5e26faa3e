"""Independent pieces of work (eval arms on a cluster, SPARK tasks) run side by side in daemon threads.

Daemon threads joined with short waits: Ctrl-C reaches the main thread at once and the process can leave;
work in flight is continued from the store by `--resume`, as after any interruption.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


def run_side_by_side(calls: list[Callable[[], None]], names: list[str] | None = None) -> None:
    """Run every call in its own thread and wait for all of them. The calls report their own errors."""
    threads = [threading.Thread(target=call, name=names[i] if names else None, daemon=True)
               for i, call in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.5)
