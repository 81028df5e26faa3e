"""Writing imported sessions to the store: a whole file in one transaction, each session once.

A file's sessions, their steps and model calls are written in one transaction: a file that fails part way
(a bug, the store refusing a write) leaves nothing of itself, and can be imported again once fixed. Lines that
cannot be read are not failures: they are skipped, counted and reported with the file's other results.

Idempotency: a session is stored once per source (the store's unique (source, external_id)). Importing it again
adds nothing when its content is unchanged. A session whose source id is its own (a Claude Code or Codex
session, an ATIF trajectory, an Inspect sample) and whose content changed since (a session that went on after it
was first imported) replaces its earlier episode; a session identified by a hash of its content (OpenAI chat
lines) is new content by definition.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, delete, insert, select
from sqlalchemy.exc import IntegrityError

from agentdistill.errors import AgentDistillError
from agentdistill.importers.base import MAX_BAD_LINES_KEPT, BadLine, Empty, ImportFileError, Session, steps_of
from agentdistill.secrets import redact, scrub
from agentdistill.secrets import values as secret_values
from agentdistill.store.models import Episode, ModelCall, Run, Step, Task, utcnow
from agentdistill.store.store import MAX_FIELD_CHARS, Store, call_row

log = logging.getLogger(__name__)

# Built once: building a statement costs more than running it (a file of many short sessions runs them all)
_FIND = select(Episode.id, Episode.provenance).where(Episode.source == bindparam("b_source"),
                                                     Episode.external_id == bindparam("b_external"))
_FIND_TASK = select(Task.id).where(Task.env == bindparam("b_env"), Task.name == bindparam("b_name"),
                                   Task.variation == 0)
_STEP_IDS = select(Step.idx, Step.id).where(Step.episode_id == bindparam("b_episode"))
_INSERT_TASK = insert(Task).returning(Task.id)
_INSERT_EPISODE = insert(Episode).returning(Episode.id)


@dataclass
class FileReport:
    """What importing one file did."""

    path: Path
    format: str
    added: int = 0  # sessions
    replaced: int = 0
    unchanged: int = 0
    steps: int = 0
    bad_lines: list[BadLine] = field(default_factory=list)  # the first MAX_BAD_LINES_KEPT
    n_bad: int = 0
    error: str | None = None  # the file failed: nothing of it was written
    error_where: int | str | None = None  # the line or place at fault
    note: str | None = None  # e.g. nothing to import in it

    def bad(self, line: BadLine) -> None:
        self.n_bad += 1
        if len(self.bad_lines) < MAX_BAD_LINES_KEPT:
            self.bad_lines.append(line)


class ImportRun:
    """The run an import invocation records its episodes under (kind "import"), created with the first episode
    it writes, inside that file's transaction (a run of nothing is never left behind)."""

    def __init__(self, store: Store, name: str, recipe: dict[str, Any]):
        self.store, self.name, self.recipe = store, name, scrub(recipe)
        self.id: str | None = None  # once committed
        self.pending: str | None = None  # inserted in the transaction of the file being written
        self.next_plan = 0
        self.prices: dict[str, Any] = {}  # model -> litellm price, for files without costs
        self.tasks: dict[tuple[str, str], int] = {}  # (env, name) -> task id, in committed or current transactions

    def ensure(self, conn) -> str:
        """The run's id, its row inserted on `conn` if no committed transaction holds it yet."""
        if self.id is None and self.pending is None:
            self.pending = uuid.uuid4().hex[:12]
            conn.execute(insert(Run), {"id": self.pending, "name": self.name, "kind": "import", "recipe": self.recipe,
                                       "status": "running"})
        return self.id or self.pending

    def committed(self, ok: bool) -> None:
        """The file's transaction ended: the run's row is kept if it committed, else gone with it."""
        if ok and self.pending:
            self.id = self.pending
        if not ok:
            self.tasks.clear()  # rows this transaction created are gone with it
        self.pending = None

    def finish(self) -> None:
        if self.id is not None:
            self.store.set_run_status(self.id, "done")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _bound(obj: Any, where: str, truncated: dict[str, int]) -> Any:
    """Every string in `obj` cut to the store's bound per text (tool arguments and content parts included)."""
    if isinstance(obj, str):
        if len(obj) <= MAX_FIELD_CHARS:
            return obj
        truncated[where] = len(obj)
        return obj[:MAX_FIELD_CHARS] + f"\n[... truncated by agentdistill: {len(obj)} characters in all]"
    if isinstance(obj, dict):
        return {k: _bound(v, f"{where}.{k}", truncated) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_bound(v, f"{where}[{i}]", truncated) for i, v in enumerate(obj)]
    return obj


def _call_row(step_id: int, call: dict[str, Any], secrets: list[str]) -> dict[str, Any]:
    """The store's model_calls row (secrets redacted, texts bounded), with the assistant messages in `outputs`
    redacted and bounded too (call_row does that for text outputs only)."""
    truncated: dict[str, int] = {}
    call = {**call, "messages": _bound(call["messages"], "messages", truncated),
            "outputs": scrub(_bound(call["outputs"], "outputs", truncated), secrets)}
    row = call_row(step_id, call)
    if truncated:
        row["params"] = {**row["params"], "truncated": {**row["params"].get("truncated", {}), **truncated}}
    return row


def _task_id(conn, run: ImportRun, env: str, name: str, goal: str | None) -> int:
    """The task's row on this transaction's connection (Store.task_id opens its own, which SQLite would make
    wait for this transaction's write lock)."""
    key = (env, name[:200])
    if key not in run.tasks:
        found = conn.execute(_FIND_TASK, {"b_env": key[0], "b_name": key[1]}).scalar()
        run.tasks[key] = found if found is not None else conn.execute(_INSERT_TASK, {
            "env": key[0], "name": key[1], "variation": 0, "split": "train", "goal": goal, "meta": {}}).scalar_one()
    return run.tasks[key]


def _write_session(conn, run: ImportRun, fmt: str, session: Session, provenance: dict[str, Any],
                   tags: list[str], role: str, report: FileReport) -> None:
    source = f"import:{fmt}"
    external_id = session.external_id[:200]
    digest = session.digest()
    found = conn.execute(_FIND, {"b_source": source, "b_external": external_id}).first()
    if found is not None:
        if (found.provenance or {}).get("digest") == digest or not session.replaceable:
            report.unchanged += 1
            return
        conn.execute(delete(Episode).where(Episode.id == found.id))  # its steps, calls and labels go with it
    steps = steps_of(session, run.prices)
    secrets = secret_values()
    goal = redact(session.goal[:2000], secrets) if session.goal and session.goal_is_task else None
    task_id = _task_id(conn, run, fmt, redact(session.task, secrets) or "session", goal)
    started = session.started_at or utcnow()
    finished = session.finished_at or started
    where = ({"lines": [session.lines[0], session.lines[-1]]} if session.lines
             else {"where": session.where} if session.where else {})
    fields = {
        "run_id": run.ensure(conn), "plan_index": run.next_plan, "attempt": 0, "task_id": task_id, "role": role,
        "policy_id": (session.agent or source)[:300], "model": session.model, "sampling": {}, "seed": 0,
        "status": session.status, "success": session.success, "reward": session.reward, "score": session.score,
        "n_steps": len(steps), "prompt_tokens": sum(s.prompt_tokens for s in steps),
        "completion_tokens": sum(s.completion_tokens for s in steps), "cost": sum(s.cost for s in steps),
        "wall_time": max(0.0, (finished - started).total_seconds()),
        "error": redact(session.error, secrets) if session.error else None,
        "source": source, "external_id": external_id, "tags": tags or None,
        "provenance": scrub({**provenance, **where, "digest": digest, **session.meta}, secrets),
        "started_at": started, "finished_at": finished,
    }
    episode_id = conn.execute(_INSERT_EPISODE, fields).scalar_one()
    run.next_plan += 1
    if steps:
        conn.execute(insert(Step), [st.row(episode_id) for st in steps])
        ids = dict(conn.execute(_STEP_IDS, {"b_episode": episode_id}).all())
        calls = [_call_row(ids[st.idx], c, secrets) for st in steps for c in st.calls]
        if calls:
            conn.execute(insert(ModelCall), calls)
    report.steps += len(steps)
    if found is not None:
        report.replaced += 1
    else:
        report.added += 1


def write_file(store: Store, run: ImportRun, path: Path, fmt: str, items: Iterable[Session | BadLine],
               tags: list[str], role: str) -> FileReport:
    """Read `items` (an importer's output for `path`) into the store in one transaction."""
    report = FileReport(path, fmt)
    try:
        provenance = {"file": str(path.resolve()), "sha256": sha256_of(path), "format": fmt}
    except OSError as e:
        report.error = f"cannot read ({e.strerror or e})"
        return report
    ok = False
    try:
        with store.engine.begin() as conn:
            for item in items:
                if isinstance(item, BadLine):
                    report.bad(item)
                    continue
                _write_session(conn, run, fmt, item, provenance, tags, role, report)
        ok = True
    except Empty as e:
        report.note = f"nothing to import ({e})"
    except ImportFileError as e:
        report.error, report.error_where = str(e), e.where
    except IntegrityError:  # another import wrote one of these sessions while this one ran
        report.error = "another import wrote the same sessions at the same time: import this file again"
    except AgentDistillError as e:
        report.error = str(e)
    except Exception as e:  # a shape this importer does not know (the tools' formats change): this file only
        log.debug("importing %s failed", path, exc_info=True)
        report.error = f"failed ({type(e).__name__}: {e}); run with -v for the traceback"
    finally:
        run.committed(ok)
    if report.error:
        report.added = report.replaced = report.unchanged = report.steps = 0  # rolled back: nothing was written
    return report
