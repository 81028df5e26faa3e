"""Env instances kept, idle, after their run, for this process's next run on the same env.

Starting an env is costly (a ScienceWorld JVM, a browser, and on Ray a worker process with agentdistill's
imports), and a fresh JVM plays its first episodes slowly while it compiles. A pipeline's collect runs and
eval arms, or a script's runs one after another, take the instances an earlier run left here instead of
starting new ones. An idle instance still holds memory (and, in a Ray actor, its CPUs), so it is stopped after
`runner.keep_envs_s`, when this process starts instances of another kind, and when this process exits.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

log = logging.getLogger(__name__)


class Kept:
    """Idle instances by key (what they can be reused for). `stop(pairs, wait)` stops a list of (key, instance)
    pairs; with `wait=False` it may return before they are stopped."""

    def __init__(self, what: str, stop: Callable[[list[tuple[Hashable, Any]], bool], None]):
        self.what = what
        self._stop_fn = stop
        self._lock = threading.Condition()  # guards _kept and _sweeper; wakes the sweeper
        self._kept: list[tuple[Hashable, Any, float]] = []  # (key, instance, stop after: time.monotonic())
        self._sweeper: threading.Thread | None = None  # stops expired instances; ends when none is kept
        self._exit_hook = False

    def __len__(self) -> int:
        with self._lock:
            return len(self._kept)

    def put(self, key: Hashable, instances: list, keep_s: float) -> None:
        """Keep `instances` for `keep_s` seconds (0: stop them now)."""
        if not instances:
            return
        if keep_s <= 0:
            self._stop_fn([(key, i) for i in instances], True)
            return
        with self._lock:
            self._kept += [(key, i, time.monotonic() + keep_s) for i in instances]
            if not self._exit_hook:  # after Ray's own hook (registered at its import), so this one runs first
                atexit.register(self.stop_all)
                self._exit_hook = True
            if self._sweeper is None:
                self._sweeper = threading.Thread(target=self._sweep, name=f"agentdistill-kept-{self.what}",
                                                 daemon=True)
                self._sweeper.start()
            self._lock.notify()

    def _sweep(self) -> None:
        with self._lock:
            while self._kept:
                due = min(deadline for _, _, deadline in self._kept) - time.monotonic()
                if due > 0:
                    self._lock.wait(due)
                    continue
                now = time.monotonic()
                self._lock.release()  # stopping takes a while (a JVM closing): takers and keepers go on meanwhile
                try:
                    self._stop(lambda _, deadline: deadline <= now, wait=True)
                finally:
                    self._lock.acquire()
            self._sweeper = None

    def take(self, key: Hashable) -> Any | None:
        """A kept instance for `key`, no longer kept; None if there is none."""
        with self._lock:
            for n, (k, instance, _) in enumerate(self._kept):
                if k == key:
                    del self._kept[n]
                    log.debug("reusing a kept %s", self.what)
                    return instance
        return None

    def stop_others(self, key: Hashable | None = None) -> None:
        """Stop, in the background, every kept instance not for `key` (None: all): the caller is about to start
        instances (or Ray tasks) that need what they hold."""
        self._stop(lambda k, _: key is None or k != key, wait=False)

    def stop_all(self) -> None:
        self._stop(lambda *_: True, wait=True)

    def _stop(self, which: Callable[[Hashable, float], bool], wait: bool) -> None:
        with self._lock:
            stopping = [(k, i) for k, i, deadline in self._kept if which(k, deadline)]
            self._kept = [entry for entry in self._kept if not which(entry[0], entry[2])]
            self._lock.notify()  # the sweeper ends if nothing is left
        if stopping:
            self._stop_fn(stopping, wait)
