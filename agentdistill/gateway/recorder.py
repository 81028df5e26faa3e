"""Writing the gateway's sessions to the store, off the request path, without losing any when the store fails.

A call is answered first; its record goes on a queue that one writer thread empties into the store (a session's
episode, created on its first call, and one step per call, with its model call, in one transaction). When the
store cannot take a write (a server down, a locked or full disk), the record goes to the spool, a JSON-lines file
on disk, and so does everything after it until the spool is written out, in order, once the store answers again:
by this process, or by the next gateway started on the same spool after a restart. The spool is bounded
(`max_spool_bytes`); a record that would overflow it is dropped. Nothing goes quietly: the first failure, the
recovery and every drop are logged, and `status()` (the gateway's `/health`) counts what was recorded, what waits
in the queue and the spool, and what was dropped. A record the store refuses for what it holds rather than for
being unavailable (a bug, not an outage) is set aside in `rejected.jsonl` beside the spool, so it cannot block
the records behind it. What a crash loses: the records still in the queue (written within milliseconds while the
store is up) and the step in flight.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError

from agentdistill.errors import ConfigError
from agentdistill.secrets import redact, scrub
from agentdistill.store.models import Episode, ModelCall, Step, utcnow
from agentdistill.store.store import MAX_FIELD_CHARS, Store, call_row

log = logging.getLogger(__name__)

SOURCE = "gateway"
MAX_SESSIONS_CACHED = 100_000
_STOP = object()


def _totals(column, zero):
    return select(func.coalesce(column, zero)).where(Step.episode_id == Episode.id).scalar_subquery()


# an episode's totals from its stored steps, after each write (its reward is the outcome's, not a sum of steps)
_TOTALS = (update(Episode).where(Episode.id == bindparam("b_episode_id")).values(
    n_steps=_totals(func.count(Step.id), 0), prompt_tokens=_totals(func.sum(Step.prompt_tokens), 0),
    completion_tokens=_totals(func.sum(Step.completion_tokens), 0), cost=_totals(func.sum(Step.cost), 0.0),
    status="done"))


def store_unavailable(e: BaseException) -> bool:
    """The store cannot take writes now (worth keeping the record for later), as opposed to refusing this one."""
    return isinstance(e, (OperationalError, InterfaceError)) or (isinstance(e, DBAPIError) and e.connection_invalidated)


class Spool:
    """Records waiting for the store, in order, as JSON lines; `pending.pos` holds the offset of the first one not
    yet written (so a crash while writing them out repeats at most one, which the writer recognizes)."""

    def __init__(self, directory: Path, max_bytes: int):
        from filelock import FileLock, Timeout

        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.file, self.pos_file, self.rejected = self.dir / "pending.jsonl", self.dir / "pending.pos", self.dir / "rejected.jsonl"
        self.max_bytes = max_bytes
        self._dir_lock = FileLock(str(self.dir / ".lock"), thread_local=False)  # released by the server's thread
        try:
            self._dir_lock.acquire(timeout=0)
        except Timeout:
            raise ConfigError(f"another gateway is spooling to {self.dir}: give this one its own --spool directory") from None
        self._lock = threading.Lock()
        self.pending = self._count()

    def _pos(self) -> int:
        try:
            return int(self.pos_file.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _count(self) -> int:
        if not self.file.exists():
            return 0
        with self.file.open("rb") as f:
            f.seek(self._pos())
            return sum(1 for line in f if line.strip())

    def append(self, record: dict[str, Any]) -> bool:
        """Keep a record for later; False if the spool is full (the caller counts it dropped)."""
        line = json.dumps(scrub(record), default=str).encode() + b"\n"  # redacted: the spool is a file on disk
        with self._lock:
            size = self.file.stat().st_size if self.file.exists() else 0
            if size + len(line) > self.max_bytes:
                return False
            with self.file.open("ab") as f:
                f.write(line)
            self.pending += 1
            return True

    def drain(self, write, refused) -> int:
        """Write spooled records in order with `write(record)` until none is left (then the files go) or the store
        is unavailable (its exception is raised; the record stays first in line). A record the store refuses for
        what it holds goes to `refused(record, exception)` and the rest follow. Returns how many were taken."""
        from agentdistill.paths import write_atomic

        taken = 0
        while True:
            with self._lock:
                pos = self._pos()
                line = b""
                if self.file.exists():
                    with self.file.open("rb") as f:
                        f.seek(pos)
                        line = f.readline()
                if not line:  # all written: the next failure starts a fresh file
                    self.file.unlink(missing_ok=True)
                    self.pos_file.unlink(missing_ok=True)
                    self.pending = 0
                    return taken
            try:
                record = json.loads(line) if line.strip() else None
            except ValueError:  # a line cut short by a crash while it was appended: said, then skipped
                log.warning("gateway: an unreadable line in %s (cut short by a crash?) skipped", self.file)
                record = None
            if record is not None:
                try:
                    write(record)
                except Exception as e:
                    if store_unavailable(e):
                        raise
                    refused(record, e)
                taken += 1
            with self._lock:
                write_atomic(self.pos_file, str(pos + len(line)))
                self.pending = max(0, self.pending - 1)

    def reject(self, record: dict[str, Any], error: str) -> None:
        with self._lock, self.rejected.open("ab") as f:
            f.write(json.dumps({"error": error, "record": scrub(record)}, default=str).encode() + b"\n")

    def close(self) -> None:
        self._dir_lock.release()


class Recorder:
    """The writer of one gateway's sessions (episodes of `run_id`, source "gateway")."""

    def __init__(self, store: Store, run_id: str, spool_dir: Path, *, role: str = "teacher", policy_id: str = "gateway",
                 model: str | None = None, max_queue: int = 10_000, max_spool_bytes: int = 256 << 20,
                 retry_s: float = 2.0):
        self.store, self.run_id, self.role, self.policy_id, self.model = store, run_id, role, policy_id, model
        self.spool = Spool(spool_dir, max_spool_bytes)
        self.retry_s = retry_s
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        # session id -> [episode id, next step idx, tools digest of its last step], the most recent sessions
        self._sessions: OrderedDict[str, list] = OrderedDict()
        self._submitted: OrderedDict[str, None] = OrderedDict()  # sessions this process has recorded calls of
        self._plan = 0
        self.counts = {"recorded": 0, "outcomes": 0, "dropped": 0, "rejected": 0, "store_errors": 0}
        self.last_error: str | None = None
        self._failing_since: float | None = None
        self._last_log = 0.0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="agentdistill-gateway-recorder", daemon=True)
        if self.spool.pending:
            log.warning("gateway: %d records spooled by an earlier gateway in %s: writing them to the store",
                        self.spool.pending, self.spool.dir)

    # ---- the request side ----------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, record: dict[str, Any]) -> None:
        """Queue a record (never blocks the request); a full queue puts it straight into the spool."""
        sid = record.get("session")
        if record.get("kind") == "call" and sid not in self._submitted:
            with self._lock:
                self._submitted[sid] = None
                if len(self._submitted) > MAX_SESSIONS_CACHED:
                    self._submitted.popitem(last=False)
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._keep(record, "the recorder's queue is full")

    def close(self, timeout: float = 30.0) -> None:
        """Write (or spool) everything queued, then stop."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)
        self.spool.close()
        try:
            self.store.set_run_status(self.run_id, "done")
        except Exception as e:  # the store is down: the run stays "running", its records wait in the spool
            log.warning("gateway: run %s not marked done (%s)", self.run_id, _line(e))

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {**self.counts, "queued": self._queue.qsize(), "spooled": self.spool.pending,
                    "store": "failing" if self._failing_since is not None else "ok", "last_store_error": self.last_error,
                    "spool": str(self.spool.dir), "run_id": self.run_id}

    def known(self, sid: str) -> bool | None:
        """Whether a session exists (recorded, or on its way); None if the store cannot say now."""
        if sid in self._submitted or sid in self._sessions:
            return True
        try:
            return self._find(sid) is not None
        except Exception as e:
            if store_unavailable(e):
                return None
            raise

    # ---- the writer thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        next_try = 0.0
        while True:
            if self.spool.pending and time.monotonic() >= next_try and not self._drain():
                next_try = time.monotonic() + self.retry_s
            try:
                record = self._queue.get(timeout=self.retry_s if self.spool.pending else 1.0)
            except queue.Empty:
                continue
            if record is _STOP:
                break
            if self.spool.pending:  # older records wait in the spool: this one goes behind them
                self._keep(record, None)
                continue
            try:
                self._write(record)
                self._recovered()
            except Exception as e:
                self._failed(record, e)
        # closing: what is still queued is written, or spooled if the store is failing
        while True:
            try:
                record = self._queue.get_nowait()
            except queue.Empty:
                break
            if record is _STOP:
                continue
            if self.spool.pending:
                self._keep(record, None)
                continue
            try:
                self._write(record)
            except Exception as e:
                self._failed(record, e)
        if self.spool.pending and self._failing_since is None:  # the store is back since the last try: one more
            self._drain()
        if self.spool.pending:
            log.warning("gateway: %d records stay spooled in %s: the next gateway on that spool writes them",
                        self.spool.pending, self.spool.dir)

    def _drain(self) -> bool:
        try:
            n = self.spool.drain(lambda r: self._write(r, replay=True), self._reject)
        except Exception as e:  # unavailable again: the rest waits
            self._note_failure(e)
            return False
        if n:
            log.warning("gateway: the store takes writes again: %d spooled records written", n)
        self._recovered()
        return True

    def _keep(self, record: dict[str, Any], reason: str | None) -> None:
        if self.spool.append(record):
            return
        with self._lock:
            self.counts["dropped"] += 1
        log.warning("gateway: record of session %s dropped: the spool %s is full (%d records wait)%s",
                    record.get("session"), self.spool.dir, self.spool.pending, f"; {reason}" if reason else "")

    def _failed(self, record: dict[str, Any], e: Exception) -> None:
        if store_unavailable(e):
            self._note_failure(e)
            self._keep(record, None)
        else:
            self._reject(record, e)

    def _reject(self, record: dict[str, Any], e: Exception) -> None:
        message = _line(e)
        self.spool.reject(record, message)
        with self._lock:
            self.counts["rejected"] += 1
        log.warning("gateway: the store refused a record of session %s (%s): kept in %s", record.get("session"),
                    message, self.spool.rejected)

    def _note_failure(self, e: Exception) -> None:
        now = time.monotonic()
        with self._lock:
            self.counts["store_errors"] += 1
            self.last_error = _line(e)
            first = self._failing_since is None
            if first:
                self._failing_since = now
        if first or now - self._last_log > 60:
            self._last_log = now
            log.warning("gateway: the store cannot take writes (%s): records are kept in %s (%d so far) and written "
                        "when it can", self.last_error, self.spool.dir, self.spool.pending + 1)

    def _recovered(self) -> None:
        if self._failing_since is not None:
            with self._lock:
                self._failing_since = None

    # ---- store writes --------------------------------------------------------------------------------------
    def _write(self, record: dict[str, Any], replay: bool = False) -> None:
        if record.get("kind") == "outcome":
            self._write_outcome(record)
        else:
            self._write_call(record, replay)

    def _find(self, sid: str) -> int | None:
        with self.store.session() as s:
            return s.scalar(select(Episode.id).where(Episode.source == SOURCE, Episode.external_id == sid))

    def _session(self, record: dict[str, Any]) -> list:
        sid = record["session"]
        found = self._sessions.get(sid)
        if found is not None:
            self._sessions.move_to_end(sid)
            return found
        episode_id = self._find(sid)
        if episode_id is None:
            goal = _first_user_text(record)
            task_id = self.store.task_id("gateway", sid, 0, "train", goal=redact(goal[:2000]) if goal else None)
            try:
                episode_id = self.store.start_episode(
                    self.run_id, self._next_plan(), task_id, role=self.role, policy_id=self.policy_id,
                    model=self.model, source=SOURCE, external_id=sid, tags=[], sampling={},
                    provenance=scrub({"gateway_run": self.run_id, "named_by": record.get("named_by"),
                                      "api": record.get("api"), "route": record.get("route"),
                                      "client": record.get("client")}))
            except IntegrityError:  # another gateway on this store started it meanwhile
                episode_id = self._find(sid)
                if episode_id is None:
                    raise
        with self.store.session() as s:
            last = s.scalar(select(func.max(Step.idx)).where(Step.episode_id == episode_id))
        entry = [episode_id, 0 if last is None else last + 1, None]
        self._sessions[sid] = entry
        if len(self._sessions) > MAX_SESSIONS_CACHED:  # an old session that goes on is looked up again
            self._sessions.popitem(last=False)
        return entry

    def _next_plan(self) -> int:
        if self._plan == 0:  # this run's episodes so far (none, unless a restart kept its run)
            with self.store.session() as s:
                self._plan = (s.scalar(select(func.max(Episode.plan_index)).where(Episode.run_id == self.run_id)) or -1) + 1
        plan, self._plan = self._plan, self._plan + 1
        return plan

    def _write_call(self, record: dict[str, Any], replay: bool) -> None:
        from agentdistill.gateway.steps import step_of

        entry = self._session(record)
        episode_id, idx, tools = entry
        if replay and self._written_before(episode_id, record["call_id"]):
            return
        step, digest = step_of(record, idx, tools)
        row = step.row(episode_id)
        calls = [call_row(None, c) for c in step.calls]
        steps_table, calls_table = Step.__table__, ModelCall.__table__
        with self.store.engine.begin() as conn:  # the step, its model call and the session's totals: all or nothing
            step_id = conn.execute(insert(steps_table).returning(steps_table.c.id), row).scalar_one()
            conn.execute(insert(calls_table), [{**c, "step_id": step_id} for c in calls])
            conn.execute(_TOTALS, {"b_episode_id": episode_id, "finished_at": utcnow()})
        entry[1], entry[2] = idx + 1, digest
        with self._lock:
            self.counts["recorded"] += 1

    def _written_before(self, episode_id: int, call_id: str) -> bool:
        with self.store.session() as s:
            return s.scalar(select(Step.id).where(Step.episode_id == episode_id,
                                                  Step.info["call_id"].as_string() == call_id)) is not None

    def _write_outcome(self, record: dict[str, Any]) -> None:
        episode_id = self._sessions[record["session"]][0] if record["session"] in self._sessions else self._find(record["session"])
        if episode_id is None:
            raise LookupError(f"no session {record['session']!r} in the store")
        outcome = record["outcome"]
        with self.store.session() as s, s.begin():
            ep = s.get(Episode, episode_id)
            for field in ("success", "reward", "score"):
                if outcome.get(field) is not None:
                    setattr(ep, field, outcome[field])
            if outcome.get("feedback") is not None:
                text = redact(outcome["feedback"])
                ep.feedback = text[:MAX_FIELD_CHARS]
            if outcome.get("tags"):
                ep.tags = list(dict.fromkeys([*(ep.tags or []), *outcome["tags"]]))
            ep.status = "done"
        with self._lock:
            self.counts["outcomes"] += 1


def _line(e: BaseException) -> str:
    text = redact(str(getattr(e, "orig", None) or e)).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def _first_user_text(record: dict[str, Any]) -> str:
    from agentdistill.gateway.steps import text_of

    for m in record.get("request", {}).get("messages") or []:
        if isinstance(m, dict) and m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, list):  # Anthropic blocks: the text ones
                content = [b for b in content if isinstance(b, dict) and b.get("type") in ("text", None)]
            return text_of(content)
    return ""
