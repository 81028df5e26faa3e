"""Dynamic batching of whole generate calls: requests that arrive while the model is busy are answered
together by one generate call. In-process Llama models use continuous batching instead (engine.py), where
requests join and leave a running batch at every token; this serves vLLM (whose own engine then batches
further) and the in-process architectures the engine does not drive.

On a small model the cost of a decoding step is mostly fixed overhead (30 layers of small kernels),
so decoding 8 sequences costs little more than decoding 1: concurrent episodes stop queueing behind
one another. Requests are grouped by what a batch must share (sampling settings and stop strings);
each keeps its own prompt, max_tokens, n, token counts and latency.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Request:
    messages: list[dict[str, str]]
    n: int
    temperature: float
    max_tokens: int
    stop: tuple[str, ...]
    owner: Any = None  # the model object whose settings (id, price, top_p) answer it
    future: Future = field(default_factory=Future)

    @property
    def group(self) -> tuple:
        """What requests answered by one generate call must share."""
        return (id(self.owner), self.temperature > 0, self.temperature, self.stop)


class BatcherClosed(RuntimeError):
    """The batcher was closed (its model released) before this request was queued: ask the model again."""


class Batcher:
    """One worker thread per model: takes every queued request when it becomes free (after waiting
    `window` seconds for stragglers), runs compatible ones as one batch of at most `max_batch` rows.

    Concurrent episodes come back to the model in waves: a batch's requesters each take an env step and
    ask again a few milliseconds apart. Started on the first of them, the next batch would hold one
    request while the others queue behind it for a whole generation, and the episodes would stay split
    into out-of-phase groups. So after a batch, the worker waits up to `patience` seconds for as many
    requests as the batch answered plus those that queued meanwhile (never longer: an episode that
    ended does not come back); a lone episode is never kept waiting for others."""

    def __init__(self, generate: Callable[[list[Request]], list[Any]], max_batch: int = 16, window: float = 0.002,
                 patience: float = 0.05):
        """`generate(batch)` answers a list of compatible requests, one result per request, in order."""
        self.generate, self.max_batch, self.window, self.patience = generate, max_batch, window, patience
        self._queue: queue.Queue[Request | None] = queue.Queue()
        self._closed, self._closing = False, threading.Lock()
        self._thread = threading.Thread(target=self._work, name="agentdistill-batcher", daemon=True)
        self._thread.start()

    def submit(self, request: Request) -> Any:
        with self._closing:  # never queued behind the end marker, where no worker would answer it
            if self._closed:
                raise BatcherClosed
            self._queue.put(request)
        return request.future.result()

    def close(self) -> None:
        """The worker ends once the requests queued before this are answered; later ones are refused."""
        with self._closing:
            self._closed = True
            self._queue.put(None)

    def _work(self) -> None:
        pending: list[Request] = []
        closing = False
        expected, regroup_until = 0, 0.0  # requests likely on their way back, and until when to wait for them
        while True:
            if not pending:
                if closing:
                    return
                pending.append(self._queue.get())
                time.sleep(self.window)
            while True:
                try:
                    pending.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            while None not in pending and len(pending) < expected:
                left = regroup_until - time.monotonic()
                if left <= 0:
                    break
                try:
                    pending.append(self._queue.get(timeout=left))
                except queue.Empty:
                    break
            if None in pending:  # answer what came before the end marker, then end
                closing = True
                pending = [r for r in pending if r is not None]
                if not pending:
                    return
            group = pending[0].group
            batch, rows, rest = [], 0, []
            for r in pending:
                rows_r = r.n if r.temperature > 0 else 1
                if r.group == group and (not batch or rows + rows_r <= self.max_batch):
                    batch.append(r)
                    rows += rows_r
                else:
                    rest.append(r)
            pending = rest
            try:
                results = self.generate(batch)
            except BaseException as e:  # every waiting caller gets the error, the worker lives on
                for r in batch:
                    r.future.set_exception(e)
            else:
                for r, res in zip(batch, results):
                    r.future.set_result(res)
            expected = min(len(batch) + len(pending) + self._queue.qsize(), self.max_batch)
            regroup_until = time.monotonic() + self.patience
