"""The Store: the one hub every component reads from and writes to.

Writes are small transactions committed as they happen (a step is committed before the next action
is chosen), so a crash loses at most the step in flight.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, bindparam, case, delete, exists, func, insert, inspect, select, update
from sqlalchemy.exc import DatabaseError, DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, aliased, selectinload, sessionmaker

from agentdistill.errors import AgentDistillError
from agentdistill.secrets import redact, scrub, values as secret_values
from agentdistill.store import db
from agentdistill.store.models import Base, Episode, Label, ModelCall, Run, Stage, Step, Task, utcnow
from agentdistill.store.postgres_writer import PostgresStepWriter


# SQLSTATE 53300 as the server words it: every slot taken, or only the reserved ones left
_NO_FREE_CONNECTION = re.compile(r"too many clients|remaining connection slots are reserved")


def _db_problem(url: str, e: Exception) -> str:
    message = str(getattr(e, "orig", e)).strip()
    detail = message.splitlines()[0][:200] if message else type(e).__name__
    where = db.describe(url)
    if _NO_FREE_CONNECTION.search(message):  # connection slots taken: the server is up and full
        return (f"the PostgreSQL server at {where} has no free connection (all of its max_connections are in use): "
                "raise max_connections (postgresql.conf, then restart the server) or open fewer (a cluster run's env "
                "actors hold one each: runner.concurrency)")
    if url.startswith("sqlite"):
        return (f"{where} cannot be used as a store ({detail}): it is not an SQLite database or is damaged; "
                "point --db at another file")
    return f"cannot use the database at {where} ({detail}): check that the server is running and the URL is right"


class _creation_lock:
    """First creation of a store is serialized across processes: two runs starting on a brand-new
    database must not both create its tables (SQLite: a file lock beside the database's path in the cache;
    PostgreSQL: a session advisory lock)."""

    def __init__(self, engine: Engine):
        self.engine, self._lock, self.conn = engine, None, None

    def __enter__(self):
        if self.engine.dialect.name == "sqlite" and self.engine.url.database not in (None, "", ":memory:"):
            import hashlib

            from filelock import FileLock

            from agentdistill.paths import cache_dir

            key = hashlib.sha256(str(Path(self.engine.url.database).resolve()).encode()).hexdigest()[:16]
            (cache_dir() / "locks").mkdir(exist_ok=True)
            self._lock = FileLock(str(cache_dir() / "locks" / f"store-{key}.lock"))
            self._lock.acquire()
        elif self.engine.dialect.name == "postgresql":
            self.conn = self.engine.connect()
            self.conn.exec_driver_sql("SELECT pg_advisory_lock(727274)")  # any fixed key of ours
        return self

    def __exit__(self, *exc):
        if self._lock is not None:
            self._lock.release()
        if self.conn is not None:
            try:
                self.conn.rollback()  # a read that failed inside left the transaction aborted; the lock outlives it
                self.conn.exec_driver_sql("SELECT pg_advisory_unlock(727274)")
            finally:
                self.conn.close()


def latest_attempt():
    """SQL condition: this episode row is its plan index's last attempt (no later retry exists)."""
    later = aliased(Episode)
    return ~exists().where(later.run_id == Episode.run_id, later.plan_index == Episode.plan_index,
                           later.attempt > Episode.attempt)


MAX_FIELD_CHARS = 32_768  # per stored text: a runaway 1 MB completion must not be stored whole, twice


def _episode_total(expr, zero):
    return select(func.coalesce(expr, zero)).where(Step.episode_id == bindparam("b_episode_id")).scalar_subquery()


_EPISODE_COLUMNS = frozenset(Episode.__table__.columns.keys())


def _check_episode_columns(fields: dict[str, Any]) -> None:
    """A parameter that names no column would be dropped silently by the statements below: refuse it."""
    unknown = fields.keys() - _EPISODE_COLUMNS
    if unknown:
        raise AgentDistillError(f"episodes have no column {', '.join(sorted(unknown))}")


# Built once: building a statement costs more client CPU than sending it. The columns an execution's
# parameters name are added to the INSERT's values and the UPDATE's SET clause.
_START_EPISODE = insert(Episode).returning(Episode.id)
_FINISH_EPISODE = update(Episode).where(Episode.id == bindparam("b_episode_id")).values(
    n_steps=_episode_total(func.count(Step.id), 0), reward=_episode_total(func.sum(Step.reward), 0.0),
    prompt_tokens=_episode_total(func.sum(Step.prompt_tokens), 0),
    completion_tokens=_episode_total(func.sum(Step.completion_tokens), 0),
    cost=_episode_total(func.sum(Step.cost), 0.0))


def bounded(text: str | None, field: str, truncated: dict[str, int], secrets: list[str] | None = None) -> str | None:
    """`text` redacted and cut to MAX_FIELD_CHARS with a visible marker; the full length goes to `truncated`.
    `secrets`: secrets.values() taken once for a whole row."""
    return None if text is None else _cut(redact(text, secrets), field, truncated)


def _cut(text: Any, field: str, truncated: dict[str, int]) -> Any:
    if not isinstance(text, str) or len(text) <= MAX_FIELD_CHARS:  # None, or a message's list of parts
        return text
    truncated[field] = len(text)
    return text[:MAX_FIELD_CHARS] + f"\n[... truncated by agentdistill: {len(text)} characters in all]"


def call_row(step_id: int, call: dict[str, Any]) -> dict[str, Any]:
    """A model_calls row: secrets redacted, prompt and output texts bounded (sizes kept in params.truncated)."""
    truncated: dict[str, int] = {}
    secrets = secret_values()
    messages = [{**m, "content": _cut(m.get("content"), f"messages[{i}]", truncated)} if isinstance(m, dict) else m
                for i, m in enumerate(scrub(call.get("messages") or [], secrets))]  # scrubbed: only cut here
    # an output is the reply's text, or a whole assistant message (tool calls and their arguments: scrubbed too)
    outputs = [bounded(o, f"outputs[{i}]", truncated, secrets) if isinstance(o, str) else scrub(o, secrets)
               for i, o in enumerate(call.get("outputs") or [])]
    params = scrub(call.get("params") or {}, secrets)
    if truncated:
        params = {**params, "truncated": truncated}
    return {**call, "step_id": step_id, "messages": messages, "outputs": outputs, "params": params}


@dataclass
class StepRecord:
    """What the runner hands the store for one step (plain data: no ORM state)."""

    idx: int
    observation: str
    action: str
    reward: float = 0.0
    done: bool = False
    next_observation: str | None = None
    thought: str | None = None
    raw_output: str | None = None
    info: dict[str, Any] | None = None
    answered_by: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    latency: float = 0.0
    calls: Sequence[dict[str, Any]] = ()  # ModelCall column values

    def row(self, episode_id: int) -> dict[str, Any]:
        """The steps row: secrets redacted, each text field bounded (the full size kept in info.truncated)."""
        truncated: dict[str, int] = {}
        secrets = secret_values()
        text = {f: bounded(getattr(self, f), f, truncated, secrets)
                for f in ("observation", "action", "thought", "raw_output", "next_observation")}
        info = scrub(self.info or {}, secrets)
        if truncated:
            info = {**info, "truncated": {**info.get("truncated", {}), **truncated}}
        return {
            "episode_id": episode_id,
            "idx": self.idx,
            **text,
            "reward": self.reward,
            "done": self.done,
            "info": info,
            "answered_by": self.answered_by,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost": self.cost,
            "latency": self.latency,
        }


@dataclass
class LabelRecord:
    """A teacher's answer at a state another policy reached (DAgger), before it is stored against that step."""

    labeller: str  # "expert" or a model id
    action: str
    thought: str | None = None
    raw_output: str | None = None
    calls: Sequence[dict[str, Any]] = ()
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    latency: float = 0.0


class Store:
    def __init__(self, engine: Engine, writes: Engine | None = None):
        """`engine` for everything; `writes` (db.make_engines) for the single-statement writes of every step."""
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._writes = writes or engine
        self._step_writer = PostgresStepWriter(self._writes) if engine.dialect.name == "postgresql" else None

    @classmethod
    def open(cls, url_or_path: str | None = None, *, migrate_fresh: bool = True, create: bool = True) -> Store:
        """Open the store. A fresh database is created at the newest schema; an older schema must
        be upgraded explicitly (`agentdistill db upgrade`), so production databases never migrate
        behind the user's back. `create=False`: a missing SQLite file is an error, not a new store.
        Every problem is one line: a directory or missing folder, a file that is not a database, a
        server that does not answer, a database that holds someone else's tables."""
        url = db.resolve_url(url_or_path)
        db.check_location(url, create)
        engine, writes = db.make_engines(url)
        try:
            with _creation_lock(engine) as lock:
                # read on the lock's connection, if it has one: a second one would stay in the pool, idle
                current, head = db.current_revision(lock.conn or engine), db.head_revision()
                if current is None:
                    foreign = sorted(set(inspect(lock.conn or engine).get_table_names()) - {"alembic_version"})
                    if foreign:
                        raise AgentDistillError(
                            f"{db.describe(url)} already holds tables that are not agentdistill's "
                            f"({', '.join(foreign[:5])}{', ...' if len(foreign) > 5 else ''}): point --db at an "
                            "empty database or an agentdistill store")
                    if migrate_fresh:
                        db.upgrade(engine)
                        current = head
        except (OperationalError, DatabaseError) as e:
            engine.dispose()
            raise AgentDistillError(_db_problem(url, e)) from None
        except BaseException:
            engine.dispose()
            raise
        if current != head:
            engine.dispose()
            raise AgentDistillError(
                f"store schema is at revision {current}, this agentdistill needs {head}: "
                "run `agentdistill db upgrade` (back up the database first)"
            )
        return cls(engine, writes)

    def session(self) -> Session:
        return self._sessions()

    def close(self) -> None:
        self.engine.dispose()  # the write engine shares its pool

    def _write(self, statement, params: dict[str, Any], lost_reply: Callable[[], Any] | None = None):
        """One statement in autocommit, its result. A connection found dead (no ping before: db.unpinged)
        is replaced and the statement sent once more; if that meets a unique key, the first one may have been
        committed with its reply lost: `lost_reply()` returns what it wrote (None: a real conflict, raised)."""
        for retried in (False, True):
            try:
                with db.unpinged(), self._writes.begin() as conn:
                    result = conn.execute(statement, params)
                    return result.scalar_one() if result.returns_rows else result.rowcount
            except IntegrityError:
                found = lost_reply() if retried and lost_reply else None
                if found is None:
                    raise
                return found
            except DBAPIError as e:
                if retried or not e.connection_invalidated:
                    raise

    # ---- runs -----------------------------------------------------------------------------------
    def create_run(self, name: str, recipe: dict[str, Any], kind: str = "rollout") -> str:
        run_id = uuid.uuid4().hex[:12]
        with self.session() as s, s.begin():
            s.add(Run(id=run_id, name=name, kind=kind, recipe=scrub(recipe), status="running"))
        return run_id

    def get_run(self, run_id: str) -> Run:
        with self.session() as s:
            run = s.get(Run, run_id)
            if run is None:
                # allow an unambiguous prefix, like git
                found = s.scalars(select(Run).where(Run.id.startswith(run_id))).all()
                if len(found) != 1:
                    raise AgentDistillError(f"no run {run_id!r} in the store: see `agentdistill runs list`")
                run = found[0]
            return run

    def set_run_status(self, run_id: str, status: str) -> None:
        with self.session() as s, s.begin():
            run = s.get(Run, run_id)
            run.status = status
            run.finished_at = utcnow() if status != "running" else None

    def list_runs(self, limit: int = 50) -> list[dict[str, Any]]:
        with self.session() as s:
            q = (
                select(
                    Run,
                    func.count(Episode.id),
                    func.count(case((Episode.status == "done", 1))),  # portable: PostgreSQL cannot sum booleans
                    func.count(case((Episode.success.is_(True), 1))),
                )
                .outerjoin(Episode, (Episode.run_id == Run.id) & latest_attempt())
                .group_by(Run.id)
                .order_by(Run.created_at.desc())
                .limit(limit)
            )
            return [
                {"run": r, "episodes": n, "done": int(d or 0), "successes": int(w or 0)}
                for r, n, d, w in s.execute(q)
            ]

    # ---- tasks ----------------------------------------------------------------------------------
    def task_id(self, env: str, name: str, variation: int, split: str, goal: str | None = None) -> int:
        """The task's row, created on first use. Writers in parallel (eval arms side by side, Ray actors,
        SPARK workers) may create the same task at once: the one that loses the unique constraint reads
        the winner's row."""
        def read_or_create() -> int:
            with self.session() as s, s.begin():
                tid = s.scalar(
                    select(Task.id).where(Task.env == env, Task.name == name, Task.variation == variation)
                )
                if tid is None:
                    task = Task(env=env, name=name, variation=variation, split=split, goal=goal, meta={})
                    s.add(task)
                    s.flush()
                    tid = task.id
                elif goal:
                    s.get(Task, tid).goal = goal
                return tid

        try:
            return read_or_create()
        except IntegrityError:  # created by another writer between our read and our insert
            return read_or_create()

    # ---- episodes -------------------------------------------------------------------------------
    def episodes_by_plan(self, run_id: str) -> dict[int, Episode]:
        """Each plan index's latest attempt."""
        with self.session() as s:
            eps = s.scalars(select(Episode).where(Episode.run_id == run_id).order_by(Episode.attempt)).all()
            return {e.plan_index: e for e in eps}

    def start_episode(self, run_id: str, plan_index: int, task_id: int, **fields: Any) -> int:
        # one statement built once, its values as parameters, on the write pool: one INSERT per episode of every
        # run (an ORM flush took three times the client CPU; rebuilding the statement each time, twice)
        _check_episode_columns(fields)
        values = {"run_id": run_id, "plan_index": plan_index, "task_id": task_id, "status": "running", **fields}
        return self._write(_START_EPISODE, values,
                           lambda: self._started_before(run_id, plan_index, fields.get("attempt", 0), task_id))

    def _started_before(self, run_id: str, plan_index: int, attempt: int, task_id: int) -> int | None:
        """The episode at (run, plan index, attempt) if it can be our own INSERT whose reply was lost: of this
        task, still running, no step yet."""
        with db.unpinged(), self._writes.connect() as conn:
            return conn.execute(select(Episode.id).where(
                Episode.run_id == run_id, Episode.plan_index == plan_index, Episode.attempt == attempt,
                Episode.task_id == task_id, Episode.status == "running",
                ~exists().where(Step.episode_id == Episode.id))).scalar()

    def restart_episode(self, episode_id: int) -> None:
        """Forget an interrupted episode's partial steps so it can run again from its start."""
        with self.session() as s, s.begin():
            s.execute(delete(Step).where(Step.episode_id == episode_id))
            ep = s.get(Episode, episode_id)
            ep.status, ep.error, ep.n_steps, ep.started_at = "running", None, 0, utcnow()

    def steps(self, episode_id: int) -> list[Step]:
        with self.session() as s:
            return list(
                s.scalars(
                    select(Step)
                    .where(Step.episode_id == episode_id)
                    .order_by(Step.idx)
                    .options(selectinload(Step.calls))
                )
            )

    def add_label(self, step_id: int, label: LabelRecord, run_id: str | None = None) -> int:
        """Store a teacher's label of a stored step (secrets redacted, texts bounded like a step's). Labelling
        the same step by the same labeller again (a resumed round) keeps the first label."""
        truncated: dict[str, int] = {}
        secrets = secret_values()
        texts = {f: bounded(getattr(label, f), f, truncated, secrets) for f in ("action", "thought", "raw_output")}
        calls = [{k: v for k, v in call_row(step_id, c).items() if k != "step_id"} for c in label.calls]
        with self.session() as s, s.begin():
            found = s.scalar(select(Label.id).where(Label.step_id == step_id, Label.labeller == label.labeller))
            if found is not None:
                return found
            row = Label(step_id=step_id, run_id=run_id, labeller=label.labeller, calls=calls,
                        prompt_tokens=label.prompt_tokens, completion_tokens=label.completion_tokens,
                        cost=label.cost, latency=label.latency, **texts)
            s.add(row)
            s.flush()
            return row.id

    def labels(self, episode_ids: list[int]) -> dict[tuple[int, int], Label]:
        """(episode id, step idx) -> the label of that step, for the given episodes (one labeller per step)."""
        if not episode_ids:
            return {}
        with self.session() as s:
            rows = s.execute(select(Step.episode_id, Step.idx, Label).join(Label, Label.step_id == Step.id)
                             .where(Step.episode_id.in_(episode_ids)).order_by(Label.id))
            out: dict[tuple[int, int], Label] = {}
            for ep_id, idx, label in rows:
                out.setdefault((ep_id, idx), label)
            return out

    def set_episode_metrics(self, episode_id: int, metrics: dict[str, Any]) -> None:
        """Merge measurements into an episode's metrics (e.g. SPARK's PDI for this attempt)."""
        with self.session() as s, s.begin():
            ep = s.get(Episode, episode_id)
            ep.metrics = {**(ep.metrics or {}), **scrub(metrics)}

    def annotate_steps(self, episode_id: int, notes: dict[int, dict[str, Any]]) -> None:
        """Merge `notes[idx]` into the info of step `idx` (e.g. a trainer's per-turn KL); nothing else changes."""
        with self.session() as s, s.begin():
            for st in s.scalars(select(Step).where(Step.episode_id == episode_id, Step.idx.in_(list(notes)))):
                st.info = {**(st.info or {}), **scrub(notes[st.idx])}

    def add_step(self, episode_id: int, step: StepRecord) -> int:
        """Commit one step and its model calls atomically (SQLAlchemy Core, not an ORM session: this is the
        write every step of every episode makes; benchmarks/store_write_rate.py); on PostgreSQL in one
        statement (postgres_writer.py)."""
        row = step.row(episode_id)
        call_rows = [call_row(None, c) for c in step.calls]
        if self._step_writer is not None:
            return self._step_writer.write(row, call_rows)
        steps, calls = Step.__table__, ModelCall.__table__
        with self.engine.begin() as conn:
            step_id = conn.execute(insert(steps).returning(steps.c.id), row).scalar_one()
            rows = [{**r, "step_id": step_id} for r in call_rows]
            if len({frozenset(r) for r in rows}) == 1:  # one executemany
                conn.execute(insert(calls), rows)
            else:  # calls with different fields (a cascade's student and teacher): one insert each
                for r in rows:
                    conn.execute(insert(calls), r)
            return step_id

    def add_steps(self, episode_id: int, steps: Iterable[StepRecord]) -> int:
        """Bulk insert for imports (model calls not included): one DBAPI executemany.

        Goes to the driver directly with pre-serialized JSON: SQLAlchemy's per-row parameter
        processing would otherwise halve the insert rate (benchmarks/store_insert.py)."""
        rows = [st.row(episode_id) for st in steps]
        if not rows:
            return 0
        cols = list(rows[0])
        mark = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        sql = f"INSERT INTO steps ({', '.join(cols)}) VALUES ({', '.join([mark] * len(cols))})"
        params = [tuple(json.dumps(v) if c == "info" else v for c, v in r.items()) for r in rows]
        with self.engine.begin() as conn:
            conn.exec_driver_sql(sql, params)
        return len(rows)

    def finish_episode(self, episode_id: int, *, status: str = "done", **fields: Any) -> None:
        """The episode's totals summed from its stored steps and its outcome, in one UPDATE (sent again as it is
        if its connection was found dead: it sets the same values)."""
        _check_episode_columns(fields)
        values = {k: redact(v) if isinstance(v, str) else v for k, v in fields.items()}
        params = {**values, "b_episode_id": episode_id, "status": status, "finished_at": utcnow()}
        if self._write(_FINISH_EPISODE, params) != 1:
            raise AgentDistillError(f"no episode {episode_id} in the store to finish")

    def episodes(
        self,
        run_id: str | None = None,
        role: str | None = None,
        status: str | None = None,
        with_steps: bool = False,
        ids: list[int] | None = None,
        with_calls: bool = True,
        attempts: str = "latest",
    ) -> list[Episode]:
        """Episodes matching the filters; with attempts="latest" (the default) an errored episode that was
        retried appears once, as its last attempt; attempts="all" gives every attempt."""
        with self.session() as s:
            q = select(Episode).options(selectinload(Episode.task)).order_by(Episode.id)
            if attempts == "latest":
                q = q.where(latest_attempt())
            if with_steps:
                steps = selectinload(Episode.steps)
                q = q.options(steps.selectinload(Step.calls) if with_calls else steps)
            if run_id:
                q = q.where(Episode.run_id == run_id)
            if role:
                q = q.where(Episode.role == role)
            if status:
                q = q.where(Episode.status == status)
            if ids is not None:
                q = q.where(Episode.id.in_(ids))
            return list(s.scalars(q))

    def episode_ids(
        self,
        role: str | None = None,
        success: bool | None = None,
        env: str | None = None,
        runs: list[str] | None = None,
        split: str | None = None,
        tasks: list[str] | None = None,
        ids: list[int] | None = None,
    ) -> list[int]:
        """Ids of finished episodes matching the filters (None: any), selected in SQL (no steps loaded)."""
        q = select(Episode.id).join(Task).where(Episode.status == "done").order_by(Episode.id)
        if ids is not None:
            q = q.where(Episode.id.in_(ids))
        if role:
            q = q.where(Episode.role == role)
        if success is not None:
            q = q.where(Episode.success.is_(success))
        if env:
            q = q.where(Task.env == env)
        if runs:
            q = q.where(Episode.run_id.in_(runs))
        if split:
            q = q.where(Task.split == split)
        if tasks:
            q = q.where(Task.name.in_(tasks))
        with self.session() as s:
            return list(s.scalars(q))

    def successful_episode_ids(
        self,
        role: str,
        env: str | None = None,
        runs: list[str] | None = None,
        split: str | None = None,
        tasks: list[str] | None = None,
    ) -> list[int]:
        return self.episode_ids(role, True, env, runs, split, tasks)

    # ---- pipeline stages ------------------------------------------------------------------------
    def start_stage(self, run_id: str, name: str, kind: str, key: str, outputs: dict[str, Any] | None = None,
                    reused_from: int | None = None) -> int:
        """Record a stage of a pipeline run; a reused stage is recorded finished at once."""
        with self.session() as s, s.begin():
            done = reused_from is not None
            st = Stage(run_id=run_id, name=name, kind=kind, key=key, outputs=outputs or {}, reused_from=reused_from,
                       status="done" if done else "running", finished_at=utcnow() if done else None)
            s.add(st)
            s.flush()
            return st.id

    def update_stage(self, stage_id: int, *, status: str | None = None, outputs: dict[str, Any] | None = None,
                     error: str | None = None, wall_time: float | None = None) -> None:
        """Merge `outputs` into the stage's (partial outputs are recorded as they appear, e.g. a rollout's
        run id, so an interrupted stage can be continued)."""
        with self.session() as s, s.begin():
            st = s.get(Stage, stage_id)
            if outputs:
                st.outputs = {**(st.outputs or {}), **scrub(outputs)}
            if error is not None:
                st.error = redact(error)
            if wall_time is not None:
                st.wall_time = wall_time
            if status is not None:
                st.status = status
                st.finished_at = utcnow() if status != "running" else None

    def find_stages(self, key: str, statuses: tuple[str, ...] = ("done",)) -> list[Stage]:
        """Stages with this input key and status, newest first (a reused one points at its origin)."""
        with self.session() as s:
            return list(s.scalars(select(Stage).where(Stage.key == key, Stage.status.in_(statuses))
                                  .order_by(Stage.id.desc())))

    def stage(self, stage_id: int) -> Stage:
        with self.session() as s:
            return s.get(Stage, stage_id)

    def stages(self, run_id: str) -> list[Stage]:
        with self.session() as s:
            return list(s.scalars(select(Stage).where(Stage.run_id == run_id).order_by(Stage.id)))

    # ---- stats ----------------------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        with self.session() as s:
            return {
                table.name: s.scalar(select(func.count()).select_from(table)) or 0
                for table in Base.metadata.sorted_tables
            }
