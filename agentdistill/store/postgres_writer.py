"""The write every step of every episode makes, on PostgreSQL: one statement, one round trip.

A step and its model calls are one statement in autocommit (the step inserted in a CTE, the calls reading
its new id), sent straight to the driver and prepared by the server once per connection and statement
shape, on a connection of the store's pool checked out without a liveness ping (db.unpinged: a ping is a
second round trip). SQLAlchemy's statement layer cost more client CPU than the write itself
(benchmarks/store_write_rate.py: the writers' Python was what bounded the rate on one machine).

A connection found dead by a write (a server restart, an idle timeout, pg_terminate_backend) is dropped and
the write tried once more on a fresh one. If the lost reply hid a commit, the retry meets the (episode, idx)
unique key: the stored step is this one (same texts, same number of calls) and its id is returned instead of
writing it twice; any other conflict is raised as it is.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import JSON, Engine, func, select

from agentdistill.errors import AgentDistillError
from agentdistill.store.db import unpinged
from agentdistill.store.models import ModelCall, Step


class PostgresStepWriter:
    def __init__(self, engine: Engine):
        import psycopg

        self.engine = engine  # the store's pool: its connections in autocommit, checked out without a ping
        self._psycopg = psycopg
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
            with unpinged():
                pooled = self.engine.raw_connection()
            conn = pooled.driver_connection
            try:
                if not conn.autocommit:  # a lone statement must commit: the pool of db.make_engines is in autocommit
                    raise AgentDistillError("the step writer needs the store's autocommit pool: open the store with "
                                            "Store.open (or pass db.make_engines' second engine to Store)")
                step_id = conn.execute(sql, params, prepare=True).fetchone()[0]  # one row per call
            except self._psycopg.errors.UniqueViolation as e:
                pooled.close()
                if not retried or e.diag.constraint_name != "uq_step_idx":
                    raise
                stored = self._committed_before(row, len(call_rows))
                if stored is None:  # another step holds this index: a real conflict, not our lost reply
                    raise
                return stored
            except self._psycopg.Error:
                if conn.broken and not retried:
                    pooled.invalidate()  # dead: the write goes again on a fresh connection
                    retried = True
                    continue
                pooled.close()
                raise
            except BaseException:  # interrupted mid-statement: the connection's state is unknown
                pooled.invalidate()
                raise
            pooled.close()
            return step_id

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
