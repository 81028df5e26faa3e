"""The store as pandas DataFrames: runs, episodes, steps and model calls, filtered in SQL.

    from agentdistill.frames import episodes, steps
    from agentdistill.store.store import Store
    store = Store.open("agentdistill.db", create=False)
    eps = episodes(store, env="textworld", role="student", efficiency=True)
    eps.groupby("run_id").success.mean()

JSON columns (recipe, info, messages, params, ...) come back as Python objects; `to_parquet` writes them
as JSON text so each table keeps one Arrow schema. Every string is redacted again on its way out (the
store holds no secret; exports check anyway). Needs pandas (and pyarrow for parquet):
pip install 'agentdistill[frames]'.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Select, select

from agentdistill.errors import AgentDistillError
from agentdistill.secrets import scrub
from agentdistill.store.models import Episode, ModelCall, Run, Step, Task
from agentdistill.store.store import Store, latest_attempt

if TYPE_CHECKING:
    import pandas as pd

JSON_COLUMNS = {"recipe", "sampling", "metrics", "info", "messages", "params", "outputs"}


def _pandas():
    try:
        import pandas
    except ImportError:
        raise AgentDistillError("dataframes need pandas: pip install 'agentdistill[frames]'") from None
    return pandas


def _frame(store: Store, q: Select, columns: list[str]) -> pd.DataFrame:
    pd = _pandas()
    with store.session() as s:
        rows = [tuple(scrub(v) if isinstance(v, (str, dict, list)) else v for v in r) for r in s.execute(q)]
    return pd.DataFrame.from_records(rows, columns=columns)


def runs(store: Store, kind: str | None = None, status: str | None = None) -> pd.DataFrame:
    """One row per run, newest first."""
    cols = (Run.id, Run.name, Run.kind, Run.status, Run.created_at, Run.finished_at, Run.recipe)
    names = ["run_id", *(c.key for c in cols[1:])]
    q = select(*cols).order_by(Run.created_at.desc())
    if kind:
        q = q.where(Run.kind == kind)
    if status:
        q = q.where(Run.status == status)
    return _frame(store, q, names)


EPISODE_COLUMNS = (Episode.id, Episode.run_id, Episode.plan_index, Episode.attempt, Episode.role, Episode.policy_id,
                   Episode.model, Episode.seed, Episode.status, Episode.success, Episode.reward, Episode.score,
                   Episode.n_steps, Episode.prompt_tokens, Episode.completion_tokens, Episode.cost, Episode.wall_time,
                   Episode.error, Episode.skill_version_id, Episode.sampling, Episode.metrics, Episode.started_at,
                   Episode.finished_at, Task.env, Task.name, Task.variation, Task.split, Task.goal)


def _episode_filter(q: Select, run_id, role, status, env, success, episode_ids, attempts) -> Select:
    if attempts == "latest":
        q = q.where(latest_attempt())
    if run_id:
        q = q.where(Episode.run_id.in_([run_id] if isinstance(run_id, str) else list(run_id)))
    if role:
        q = q.where(Episode.role == role)
    if status:
        q = q.where(Episode.status == status)
    if env:
        q = q.where(Task.env == env)
    if success is not None:
        q = q.where(Episode.success.is_(success))
    if episode_ids is not None:
        q = q.where(Episode.id.in_(list(episode_ids)))
    return q


def episodes(store: Store, run_id: str | list[str] | None = None, role: str | None = None, status: str | None = None,
             env: str | None = None, success: bool | None = None, episode_ids=None, attempts: str = "latest",
             efficiency: bool = False) -> pd.DataFrame:
    """One row per episode with its task; `efficiency=True` adds the PANDO metrics (report.efficiency)."""
    names = ["episode_id", *(c.key for c in EPISODE_COLUMNS[1:-5]), "env", "task", "variation", "split", "goal"]
    q = _episode_filter(select(*EPISODE_COLUMNS).join(Task, Task.id == Episode.task_id).order_by(Episode.id),
                        run_id, role, status, env, success, episode_ids, attempts)
    df = _frame(store, q, names)
    if efficiency:
        from agentdistill.report.efficiency import episode_efficiency

        eff = episode_efficiency(store, df["episode_id"].tolist())
        for key in ("action_repetition_rate", "step_overhead_ratio", "prompt_cache_utilization"):
            df[key] = [eff[i].as_dict()[key] if i in eff else None for i in df["episode_id"]]
    return df


STEP_COLUMNS = (Step.id, Step.episode_id, Step.idx, Step.observation, Step.thought, Step.action, Step.raw_output,
                Step.reward, Step.done, Step.next_observation, Step.answered_by, Step.prompt_tokens,
                Step.completion_tokens, Step.cost, Step.latency, Step.info)


def steps(store: Store, run_id: str | list[str] | None = None, episode_ids=None, role: str | None = None,
          env: str | None = None, status: str | None = None, attempts: str = "latest") -> pd.DataFrame:
    """One row per step, with its episode's run, role and task."""
    names = ["step_id", *(c.key for c in STEP_COLUMNS[1:]), "run_id", "role", "env", "task"]
    q = (select(*STEP_COLUMNS, Episode.run_id, Episode.role, Task.env, Task.name)
         .join(Episode, Episode.id == Step.episode_id).join(Task, Task.id == Episode.task_id)
         .order_by(Step.episode_id, Step.idx))
    return _frame(store, _episode_filter(q, run_id, role, status, env, None, episode_ids, attempts), names)


CALL_COLUMNS = (ModelCall.id, ModelCall.step_id, ModelCall.model, ModelCall.messages, ModelCall.params,
                ModelCall.outputs, ModelCall.prompt_tokens, ModelCall.completion_tokens, ModelCall.cost,
                ModelCall.latency)


def model_calls(store: Store, run_id: str | list[str] | None = None, episode_ids=None, model: str | None = None,
                role: str | None = None, attempts: str = "latest") -> pd.DataFrame:
    """One row per model request, with the step and episode it belongs to."""
    names = ["call_id", *(c.key for c in CALL_COLUMNS[1:]), "episode_id", "step_idx", "run_id", "role"]
    q = (select(*CALL_COLUMNS, Step.episode_id, Step.idx, Episode.run_id, Episode.role)
         .join(Step, Step.id == ModelCall.step_id).join(Episode, Episode.id == Step.episode_id)
         .join(Task, Task.id == Episode.task_id).order_by(ModelCall.id))
    if model:
        q = q.where(ModelCall.model == model)
    return _frame(store, _episode_filter(q, run_id, role, None, None, None, episode_ids, attempts), names)


def to_parquet(store: Store, out: Path, run_id: str | None = None, role: str | None = None,
               status: str | None = "done") -> dict[str, int]:
    """Write runs, episodes, steps and model_calls as OUT/<table>.parquet (rows per table returned). The
    directory is written beside OUT and renamed, so a failed export leaves no half a dataset."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise AgentDistillError("parquet export needs pyarrow: pip install 'agentdistill[frames]'") from None
    eps = episodes(store, run_id=run_id, role=role, status=status, efficiency=True)
    ids = eps["episode_id"].tolist()
    tables = {
        "runs": runs(store),
        "episodes": eps,
        "steps": steps(store, episode_ids=ids),
        "model_calls": model_calls(store, episode_ids=ids),
    }
    tables["runs"] = tables["runs"][tables["runs"]["run_id"].isin(set(eps["run_id"]))]
    if out.exists() and not out.is_dir():
        raise AgentDistillError(f"{out} is a file: --format parquet writes a directory of tables")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, df in tables.items():
        df = df.copy()
        for col in JSON_COLUMNS & set(df.columns):  # free-form JSON: text keeps the Arrow schema stable
            df[col] = [json.dumps(v) if v is not None else None for v in df[col]]
        df.to_parquet(tmp / f"{name}.parquet", index=False)
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)
    return {name: len(df) for name, df in tables.items()}
