"""The Store: the one hub every component reads from and writes to.

Writes are small transactions committed as they happen (a step is committed before the next action
is chosen), so a crash loses at most the step in flight.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, case, delete, exists, func, insert, inspect, select, update
from sqlalchemy.exc import DatabaseError, DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, aliased, selectinload, sessionmaker

from agentdistill.errors import AgentDistillError
from agentdistill.secrets import redact, scrub
from agentdistill.store import db
from agentdistill.store.models import Base, Episode, ModelCall, Run, Stage, Step, Task, utcnow


def _db_problem(url: str, e: Exception) -> str:
    detail = str(getattr(e, "orig", e)).strip().splitlines()[0][:200] if str(getattr(e, "orig", e)).strip() else type(e).__name__
    where = db.describe(url)
    if url.startswith("sqlite"):
        return (f"{where} cannot be used as a store ({detail}): it is not an SQLite database or is damaged; "
                "point --db at another file")
    return f"cannot use the database at {where} ({detail}): check that the server is running and the URL is right"


class _creation_lock:
    """First creation of a store is serialized across processes: two runs starting on a brand-new
    database must not both create its tables (SQLite: a file lock beside the database's path in the cache;
    PostgreSQL: a session advisory lock)."""

    def __init__(self, engine: Engine):
        self.engine, self._lock, self._conn = engine, None, None

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
            self._conn = self.engine.connect()
            self._conn.exec_driver_sql("SELECT pg_advisory_lock(727274)")  # any fixed key of ours
        return self

    def __exit__(self, *exc):
        if self._lock is not None:
            self._lock.release()
        if self._conn is not None:
            try:
                self._conn.exec_driver_sql("SELECT pg_advisory_unlock(727274)")
            finally:
                self._conn.close()


def latest_attempt():
    """SQL condition: this episode row is its plan index's last attempt (no later retry exists)."""
    later = aliased(Episode)
    return ~exists().where(later.run_id == Episode.run_id, later.plan_index == Episode.plan_index,
                           later.attempt > Episode.attempt)


MAX_FIELD_CHARS = 32_768  # per stored text: a runaway 1 MB completion must not be stored whole, twice


def bounded(text: str | None, field: str, truncated: dict[str, int]) -> str | None:
    """`text` redacted and cut to MAX_FIELD_CHARS with a visible marker; the full length goes to `truncated`."""
    if text is None:
        return None
    text = redact(text)
    if len(text) <= MAX_FIELD_CHARS:
        return text
    truncated[field] = len(text)
    return text[:MAX_FIELD_CHARS] + f"\n[... truncated by agentdistill: {len(text)} characters in all]"


def call_row(step_id: int, call: dict[str, Any]) -> dict[str, Any]:
    """A model_calls row: secrets redacted, prompt and output texts bounded (sizes kept in params.truncated)."""
    truncated: dict[str, int] = {}
    messages = [{**m, "content": bounded(m.get("content"), f"messages[{i}]", truncated)} if isinstance(m, dict) else m
                for i, m in enumerate(scrub(call.get("messages") or []))]
    outputs = [bounded(o, f"outputs[{i}]", truncated) if isinstance(o, str) else o
               for i, o in enumerate(call.get("outputs") or [])]
    params = scrub(call.get("params") or {})
    if truncated:
        params = {**params, "truncated": truncated}
    return {**call, "step_id": step_id, "messages": messages, "outputs": outputs, "params": params}


class _PostgresStepWriter:
    """A step and its model calls in one statement, in autocommit: the step inserted in a CTE, the calls
    reading its new id. Two round trips per step instead of five (the pool's liveness ping and the statement;
    before: the ping, BEGIN, two INSERTs, COMMIT), and a statement text psycopg prepares once per shape. It
    shares the store's pool: one connection per writing process (a cluster's actors each hold one).

    A connection the server drops between the ping and the statement fails it and is invalidated; the write is
    tried once more on a fresh connection. If the lost reply hid a commit, the retry meets the (episode, idx)
    unique key: the stored step is this one (same texts, same number of calls) and its id is returned instead
    of writing it twice; any other conflict is raised as it is."""

    def __init__(self, engine: Engine):
        from sqlalchemy import JSON

        self.engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._json = {c.name for t in (Step.__table__, ModelCall.__table__) for c in t.columns
                      if isinstance(c.type, JSON)}
        # Python-side defaults (a callable one, e.g. `dict`, made fresh per row); a column without one stays NULL
        self._defaults = {c.name: c.default.arg for c in ModelCall.__table__.columns if c.default is not None}
        self._call_cols = tuple(c.name for c in ModelCall.__table__.columns if c.name not in ("id", "step_id"))
        self._sql: dict[tuple, str] = {}

    def write(self, row: dict[str, Any], call_rows: list[dict[str, Any]]) -> int:
        step_cols = tuple(row)
        sql = self._statement(step_cols, len(call_rows))
        params = [self._value(c, row[c]) for c in step_cols]
        for r in call_rows:  # every column, a missing one at its Python-side default: there are no server defaults
            params += [self._value(c, r[c] if c in r else self._default(c)) for c in self._call_cols]
        retried = False
        while True:
            try:
                with self.engine.connect() as conn:
                    return conn.exec_driver_sql(sql, tuple(params)).scalars().first()  # one row per call
            except IntegrityError as e:
                if not retried or getattr(getattr(e.orig, "diag", None), "constraint_name", None) != "uq_step_idx":
                    raise
                stored = self._committed_before(row, len(call_rows))
                if stored is None:  # another step holds this index: a real conflict, not our lost reply
                    raise
                return stored
            except DBAPIError as e:
                if retried or not e.connection_invalidated:
                    raise
                retried = True

    def _committed_before(self, row: dict[str, Any], n_calls: int) -> int | None:
        """The id of the stored step at (episode, idx) if it is this write's, else None."""
        with self.engine.connect() as conn:
            found = conn.execute(select(Step.id, Step.observation, Step.action, Step.raw_output).where(
                Step.episode_id == row["episode_id"], Step.idx == row["idx"])).first()
            if found is None or (found.observation, found.action, found.raw_output) != (
                    row["observation"], row["action"], row["raw_output"]):
                return None
            calls = conn.execute(select(func.count(ModelCall.id)).where(ModelCall.step_id == found.id)).scalar_one()
            return found.id if calls == n_calls else None

    def _default(self, col: str) -> Any:
        arg = self._defaults.get(col)
        return arg(None) if callable(arg) else arg  # SQLAlchemy wraps a callable default to take a context

    def _value(self, col: str, value: Any) -> Any:
        return json.dumps(value) if col in self._json and value is not None else value

    def _statement(self, step_cols: tuple[str, ...], n_calls: int) -> str:
        key = (step_cols, n_calls)
        if key not in self._sql:
            step = (f"INSERT INTO steps ({', '.join(step_cols)}) VALUES ({', '.join(['%s'] * len(step_cols))}) "
                    "RETURNING id")
            if not n_calls:
                self._sql[key] = step
            else:
                cols = self._call_cols
                one = "((SELECT id FROM new_step), " + ", ".join(["%s"] * len(cols)) + ")"
                self._sql[key] = (f"WITH new_step AS ({step}) INSERT INTO model_calls (step_id, {', '.join(cols)}) "
                                  f"VALUES {', '.join([one] * n_calls)} RETURNING step_id")
        return self._sql[key]


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
        text = {f: bounded(getattr(self, f), f, truncated)
                for f in ("observation", "action", "thought", "raw_output", "next_observation")}
        info = scrub(self.info or {})
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


class Store:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._step_writer = _PostgresStepWriter(engine) if engine.dialect.name == "postgresql" else None

    @classmethod
    def open(cls, url_or_path: str | None = None, *, migrate_fresh: bool = True, create: bool = True) -> Store:
        """Open the store. A fresh database is created at the newest schema; an older schema must
        be upgraded explicitly (`agentdistill db upgrade`), so production databases never migrate
        behind the user's back. `create=False`: a missing SQLite file is an error, not a new store.
        Every problem is one line: a directory or missing folder, a file that is not a database, a
        server that does not answer, a database that holds someone else's tables."""
        url = db.resolve_url(url_or_path)
        db.check_location(url, create)
        engine = db.make_engine(url)
        try:
            with _creation_lock(engine):
                current, head = db.current_revision(engine), db.head_revision()
                if current is None:
                    foreign = sorted(set(inspect(engine).get_table_names()) - {"alembic_version"})
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
        return cls(engine)

    def session(self) -> Session:
        return self._sessions()

    def close(self) -> None:
        self.engine.dispose()

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
        # Core, not the ORM: one INSERT per episode of every run (a third of an ORM flush's client time)
        stmt = insert(Episode).values(run_id=run_id, plan_index=plan_index, task_id=task_id, status="running",
                                      **fields).returning(Episode.id)
        with self.engine.begin() as conn:
            return conn.execute(stmt).scalar_one()

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
        statement (_PostgresStepWriter)."""
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
        """The episode's totals summed from its stored steps and its outcome, in one UPDATE."""
        def total(expr, zero):
            return select(func.coalesce(expr, zero)).where(Step.episode_id == episode_id).scalar_subquery()

        values = {k: redact(v) if isinstance(v, str) else v for k, v in fields.items()}
        stmt = update(Episode).where(Episode.id == episode_id).values(
            n_steps=total(func.count(Step.id), 0), reward=total(func.sum(Step.reward), 0.0),
            prompt_tokens=total(func.sum(Step.prompt_tokens), 0),
            completion_tokens=total(func.sum(Step.completion_tokens), 0), cost=total(func.sum(Step.cost), 0.0),
            status=status, finished_at=utcnow(), **values)
        with self.engine.begin() as conn:
            if conn.execute(stmt).rowcount != 1:
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
