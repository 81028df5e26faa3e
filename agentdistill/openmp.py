"""Heavy torch work (loading weights, training) runs in a thread that ends with it.

torch on CPU parallelises through OpenMP (libgomp), which keeps a pool of worker threads for every thread
that has run a parallel region, for the life of that thread. Once two long-lived threads both have run
torch (say the main thread trained a student, and a model's batcher thread then generates for the
evaluation), there are more OpenMP threads than cores, and libgomp cuts every spin-wait short: its
workers sleep and wake at each of the many small kernels of a decoding step. Measured here: batched
SmolLM2 generation 21.6 tokens/s after the weights were loaded in the main thread, 17.5 after some
matmuls there, 25.9 with that work done in a thread that had ended (its pool ends with it).

For the same reason every in-process model generates on one long-lived thread: two models with a batcher
thread each (a cascade's local student and local teacher) would be two pools.
"""

from __future__ import annotations

import ctypes
import functools
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


def in_passing_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` run in a new thread that ends when it returns; its result or exception comes
    back here. Ctrl-C still reaches the work: it is raised inside the thread, which unwinds as it would have
    here (a trainer stops between two Python statements), and then here."""
    box: dict[str, Any] = {}
    done = threading.Event()  # not Thread.join: a Ctrl-C inside join can leave the thread marked as ended

    def work() -> None:
        try:
            box["result"] = fn(*args, **kwargs)
        except BaseException as e:  # handed to the caller, raised there
            box["error"] = e
        finally:
            done.set()

    thread = threading.Thread(target=work, name=f"agentdistill-{getattr(fn, '__name__', 'work')}", daemon=True)
    thread.start()
    try:
        while not done.wait(0.2):  # short waits: the main thread stays responsive to signals
            pass
    except KeyboardInterrupt:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(KeyboardInterrupt))
        done.wait()  # a second Ctrl-C leaves at once (the thread is a daemon)
        raise
    thread.join()  # its OpenMP pool goes as the thread exits
    if "error" in box:
        raise box["error"]
    return box["result"]


def in_a_thread_of_its_own(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorates heavy torch work (a training run) so that every call runs `in_passing_thread`."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> T:
        return in_passing_thread(fn, *args, **kwargs)

    return call


_jobs: queue.SimpleQueue | None = None
_generation_start = threading.Lock()
_here = threading.local()


def on_the_generation_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` run on the one thread that runs every in-process model's generation (started on
    first use, for the life of the process), so that only it keeps an OpenMP pool; called from that thread,
    it runs in place. Calls from several threads run one after another, as they would on the same cores."""
    global _jobs
    if getattr(_here, "generating", False):
        return fn(*args, **kwargs)
    with _generation_start:
        if _jobs is None:
            _jobs = queue.SimpleQueue()
            # a daemon: the process never waits at exit for generations nobody will read
            threading.Thread(target=_generate_forever, args=(_jobs,), name="agentdistill-generate", daemon=True).start()
    future: Future = Future()
    _jobs.put((future, fn, args, kwargs))
    return future.result()


def _forget_the_thread() -> None:
    """In a forked child the thread does not exist: its first generation starts a new one."""
    global _jobs, _generation_start
    _jobs, _generation_start = None, threading.Lock()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_forget_the_thread)


def _generate_forever(jobs: queue.SimpleQueue) -> None:
    _here.generating = True
    while True:
        _run(*jobs.get())  # in a call of its own: nothing of a finished job (a model's weights) stays referenced


def _run(future: Future, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    try:
        future.set_result(fn(*args, **kwargs))
    except BaseException as e:  # the caller raises it; this thread lives on
        future.set_exception(e)
