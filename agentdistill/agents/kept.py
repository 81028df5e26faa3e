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
        self._changed = threading.Condition()  # guards what follows; wakes the sweeper
        self._kept: list[tuple[Hashable, Any, float]] = []  # (key, instance, stop after: time.monotonic())
        self._sweeper: threading.Thread | None = None  # stops expired instances; ends when none is kept
        self._exit_hook = False
        self._exiting = False

    def __len__(self) -> int:
        with self._changed:
            return len(self._kept)

    def put(self, key: Hashable, instances: list, keep_s: float) -> None:
        """Keep `instances` for `keep_s` seconds (0, or once this process is exiting: stop them now)."""
        if not instances:
            return
        with self._changed:
            keep = keep_s > 0 and not self._exiting
            if keep:
                self._kept += [(key, i, time.monotonic() + keep_s) for i in instances]
                if not self._exit_hook:  # after Ray's own hook (registered at its import), so this one runs first
                    atexit.register(self._at_exit)
                    self._exit_hook = True
                if self._sweeper is None:
                    self._sweeper = threading.Thread(target=self._sweep, name=f"agentdistill-kept-{self.what}",
                                                     daemon=True)
                    self._sweeper.start()
                self._changed.notify()
        if not keep:
            self._stop_fn([(key, i) for i in instances], True)

    def count(self, which: Callable[[Hashable], bool]) -> int:
        """How many kept instances have a key for which `which` is true."""
        with self._changed:
            return sum(1 for key, _, _ in self._kept if which(key))

    def take(self, key: Hashable) -> Any | None:
        """A kept instance for `key`, no longer kept; None if there is none."""
        with self._changed:
            for n, (k, instance, _) in enumerate(self._kept):
                if k == key:
                    del self._kept[n]
                    return instance
        return None

    def stop_others(self, key: Hashable) -> None:
        """Stop, in the background, every kept instance not for `key`: the caller is about to start instances
        that need what they hold."""
        self._stop(lambda k, _: k != key, wait=False)

    def stop_all(self, wait: bool = True) -> None:
        self._stop(lambda *_: True, wait=wait)

    def _at_exit(self) -> None:
        with self._changed:
            self._exiting = True  # a run still ending on another thread stops its instances instead of keeping them
        self.stop_all()

    def _sweep(self) -> None:
        with self._changed:
            try:
                while self._kept:
                    due = min(deadline for _, _, deadline in self._kept) - time.monotonic()
                    if due > 0:
                        self._changed.wait(due)
                        continue
                    now = time.monotonic()
                    self._changed.release()  # stopping takes a while (a JVM closing): takers and keepers go on
                    try:
                        self._stop(lambda _, deadline: deadline <= now, wait=True)
                    except Exception as e:  # e.g. Ray shutting down meanwhile: what is left is stopped at exit
                        log.warning("stopping idle kept %s instances failed: %s", self.what, e)
                    finally:
                        self._changed.acquire()
            finally:  # still holding the lock: a `put` from now on starts a new sweeper
                self._sweeper = None

    def _stop(self, which: Callable[[Hashable, float], bool], wait: bool) -> None:
        with self._changed:
            stopping, staying = [], []
            for entry in self._kept:
                (stopping if which(entry[0], entry[2]) else staying).append(entry)
            self._kept = staying
            self._changed.notify()  # the sweeper ends if nothing is left
        if stopping:
            self._stop_fn([(key, instance) for key, instance, _ in stopping], wait)
