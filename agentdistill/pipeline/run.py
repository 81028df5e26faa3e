"""`agentdistill run` on a pipeline recipe: collect -> distill -> eval -> report, each stage recorded.

Every stage is keyed by a hash of its inputs: its own configuration and the outputs of the stages it
reads (the collected episodes, the checkpoint it continues, ...). A finished stage whose key comes up
again is reused (its outputs are recorded against the new pipeline run; nothing is recomputed), as
long as what it produced is still there. A stage interrupted by a crash or Ctrl-C is continued by the
next run with the same key: rollout stages (collect, each eval arm) resume their run, so finished
episodes are kept; training stages start over. `--from STAGE` recomputes that stage and every later
one; `--only STAGE` recomputes just that stage and reuses the rest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentdistill.config import Recipe, parse_recipe
from agentdistill.errors import AgentDistillError, ConfigError
from agentdistill.models.registry import release_in_process_models
from agentdistill.secrets import redact
from agentdistill.side_by_side import run_side_by_side
from agentdistill.store.store import Store

log = logging.getLogger(__name__)
KINDS = ("collect", "distill", "eval", "report")


@dataclass
class StageContext:
    store: Store
    run_id: str  # the pipeline run
    recipe: Recipe
    key: str
    outputs: dict[str, dict[str, Any]]  # finished stages' outputs, by stage name
    partial: dict[str, Any]  # what an interrupted attempt with the same key recorded (e.g. its run id)
    record: Callable[[dict[str, Any]], None]  # merge outputs into this stage's row as they appear
    progress: bool = True
    say: Callable[[str], None] = print

    @property
    def workdir(self) -> Path:
        return Path(self.recipe.workdir)

    def artifact(self, kind: str, name: str) -> Path:
        """Where this stage writes a file artifact: named by stage and input key, and never one an earlier
        attempt wrote (a recomputed stage must not overwrite the checkpoint a stored result points at)."""
        stem = self.workdir / kind / f"{self.recipe.name}-{name}-{self.key[:10]}"
        stem.parent.mkdir(parents=True, exist_ok=True)
        path, n = stem, 1
        while path.exists() or path.with_name(path.name + ".partial").exists():
            n += 1
            path = stem.with_name(f"{stem.name}-{n}")
        return path.absolute()


@dataclass
class StageDef:
    name: str  # collect, distill.<name>, eval.<arm>, report
    kind: str
    config: dict[str, Any]  # this stage's own inputs
    deps: list[str]  # stages whose outputs it reads
    execute: Callable[[StageContext], dict[str, Any]]
    still_there: Callable[[dict[str, Any]], bool] = lambda outputs: True  # can a finished result be reused?
    summary: Callable[[dict[str, Any]], str] = lambda outputs: ""

    def key(self, outputs: dict[str, dict[str, Any]]) -> str:
        inputs = {"stage": self.name, "config": self.config, "deps": {d: outputs[d] for d in self.deps}}
        return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def plan(recipe: Recipe) -> list[StageDef]:
    """The recipe's stages in execution order."""
    from agentdistill.pipeline import collect, distill, evaluate, report

    stages: list[StageDef] = []
    if recipe.collect is not None:
        stages.append(collect.stage(recipe))
    stages += [distill.stage(recipe, d) for d in recipe.distill]
    if recipe.eval is not None:
        stages += [evaluate.stage(recipe, arm) for arm in recipe.arm_names()]
    if recipe.eval is not None or recipe.report is not None:
        stages.append(report.stage(recipe))
    return stages


def select(stages: list[StageDef], pattern: str, option: str) -> list[int]:
    """Indexes of the stages `pattern` names: a kind (distill), a full name (eval.sft) or a bare
    distill/arm name (sft: its distill stage, else its eval arm)."""
    if pattern in KINDS:
        found = [i for i, s in enumerate(stages) if s.kind == pattern]
    else:
        found = [i for i, s in enumerate(stages) if s.name == pattern]
        if not found:
            found = [i for i, s in enumerate(stages) if s.name == f"distill.{pattern}"] or [
                i for i, s in enumerate(stages) if s.name == f"eval.{pattern}"]
    if not found:
        names = ", ".join(s.name for s in stages)
        raise ConfigError(f"{option} {pattern!r}: no such stage in this recipe; use one of {', '.join(KINDS)} or {names}")
    return found


def preflight(recipe: Recipe) -> None:
    """Start the environment and check every split and task the recipe names (collect and eval): one
    line on a problem, before the store is opened or anything is written."""
    from agentdistill.agents.rollout import KEPT_ENVS, env_key, first_variations, kept_or_new_env

    env = kept_or_new_env(recipe)
    try:
        if recipe.collect is not None:
            first_variations(env, recipe.collect.split, recipe.collect.tasks or recipe.env.tasks,
                             recipe.collect.variations)
        if recipe.eval is not None:
            first_variations(env, recipe.env.split, recipe.env.tasks, recipe.eval.variations or recipe.env.variations)
    except BaseException:
        env.close()
        raise
    if recipe.runner.executor == "local":  # the first local run plays on it (its Ray actors start their own)
        KEPT_ENVS.put(env_key(recipe), [env], recipe.runner.keep_envs_s)
    else:
        env.close()


def run_pipeline(store: Store, recipe: Recipe, *, run_id: str | None = None, start_from: str | None = None,
                 only: str | None = None, progress: bool = True, say: Callable[[str], None] = print,
                 on_start: Callable[[str], None] | None = None) -> str:
    """Execute the recipe's stages; returns the pipeline run id (a new one, or `run_id` to resume it)."""
    if start_from and only:
        raise ConfigError("--from and --only exclude each other: pick one")
    stages = plan(recipe)
    if not stages:
        raise ConfigError("the recipe declares no stages")
    forced: set[int] = set()
    if start_from:
        first = min(select(stages, start_from, "--from"))
        forced = set(range(first, len(stages)))
    chosen = set(select(stages, only, "--only")) if only else None
    if chosen is not None:
        forced = chosen
    if run_id is None:
        run_id = store.create_run(recipe.name, recipe.model_dump(mode="json"), kind="pipeline")
    else:
        store.set_run_status(run_id, "running")
    if on_start:
        on_start(run_id)
    mine = {(s.name, s.key): s for s in store.stages(run_id)}
    outputs: dict[str, dict[str, Any]] = {}
    stale: list[str] = []
    # on a cluster, eval arms play side by side (each arm's episodes already fan out over the actors);
    # the local executor plays them one after another, as they compete for the same cores
    side_by_side = recipe.runner.executor == "ray"
    pending: list[tuple[StageDef, str]] = []

    def flush() -> None:
        if pending:
            from agentdistill.agents.rollout import connect_executor

            at_once = connect_executor(store, recipe).runs_at_once(len(pending), recipe.runner.concurrency)
            if at_once < len(pending):
                say(f"eval: {at_once} of {len(pending)} arms at a time: the PostgreSQL server has too few connections "
                    "free for all their env actors (one each); raise its max_connections to play them all at once")
            failed: Exception | None = None
            for first in range(0, len(pending), at_once):  # every group plays; then the first failure is raised
                try:
                    outputs.update(_execute_together(store, run_id, pending[first:first + at_once], recipe, outputs,
                                                      mine, say))
                except Exception as e:
                    failed = failed or e
            if failed is not None:
                raise failed
            pending.clear()
            release_in_process_models()

    try:
        for i, st in enumerate(stages):
            if st.kind != "eval":
                flush()
            missing = [d for d in st.deps if d not in outputs]
            if missing:
                if chosen is not None and i not in chosen:
                    stale.append(st.name)  # downstream of what --only recomputed
                    continue
                raise AgentDistillError(f"stage {st.name} needs {', '.join(missing)}, which has no stored result "
                                        "for these inputs: run the whole recipe once, or use --from")
            key = st.key(outputs)
            if i not in forced:
                reused = _reusable(store, st, key)
                if reused is not None:
                    outputs[st.name] = reused.outputs
                    if (st.name, key) not in mine:
                        store.start_stage(run_id, st.name, st.kind, key, reused.outputs,
                                          reused_from=reused.reused_from or reused.id)
                    say(f"{st.name}: unchanged, reused ({st.summary(reused.outputs) or 'stored result'})")
                    continue
                if chosen is not None:  # --only: a stage whose inputs changed is left for a later run
                    stale.append(st.name)
                    continue
            if side_by_side and st.kind == "eval":
                pending.append((st, key))
                continue
            outputs[st.name] = _execute(store, run_id, st, key, recipe, outputs, mine, progress, say)
            release_in_process_models()  # the next stage loads what it needs
        flush()
        if stale:
            say(f"not run (their inputs changed; --only ran only {only}): {', '.join(stale)}; "
                f"refresh them with --from {stale[0]}")
        store.set_run_status(run_id, "done")
    except BaseException:
        store.set_run_status(run_id, "error")
        raise
    return run_id


def _reusable(store: Store, st: StageDef, key: str):
    for prior in store.find_stages(key, ("done",)):
        if st.still_there(prior.outputs):
            return prior
    return None


def _execute_together(store: Store, run_id: str, stages: list[tuple[StageDef, str]], recipe: Recipe, outputs, mine,
                      say) -> dict[str, dict[str, Any]]:
    """Stages that only read finished outputs, run at once (no progress bars: they would interleave).
    Every stage runs to its end; then the first failure, if any, is raised."""
    results: dict[str, dict[str, Any]] = {}
    errors: list[BaseException] = []
    stopping = threading.Event()

    def quiet_once_stopped(line: str) -> None:
        if not stopping.is_set():
            say(line)

    def one(st: StageDef, key: str) -> None:
        try:
            results[st.name] = _execute(store, run_id, st, key, recipe, outputs, mine, False, quiet_once_stopped)
        except BaseException as e:
            errors.append(e)

    try:
        run_side_by_side([lambda st=st, key=key: one(st, key) for st, key in stages], [st.name for st, _ in stages])
    except BaseException:
        # Ctrl-C: the arms still in flight end with the process (Ray stops their actors with the driver) and
        # `--resume` continues them; their failures as the cluster connection goes are an echo, not news
        stopping.set()
        raise
    if errors:
        raise errors[0]
    return results


def _execute(store: Store, run_id: str, st: StageDef, key: str, recipe: Recipe, outputs, mine, progress, say):
    # an interrupted attempt with the same inputs (this run's, or an earlier run's) is continued
    interrupted = store.find_stages(key, ("running", "error"))
    partial = dict(interrupted[0].outputs) if interrupted else {}
    own = mine.get((st.name, key))
    if own is not None and own.status != "done":
        stage_id = own.id
        store.update_stage(stage_id, status="running", outputs=partial)
    else:
        stage_id = store.start_stage(run_id, st.name, st.kind, key, partial)
    say(f"{st.name}: running" + (" (continuing an interrupted attempt)" if partial else ""))
    ctx = StageContext(store, run_id, recipe, key, outputs, partial, lambda o: store.update_stage(stage_id, outputs=o),
                       progress, say)
    t0 = time.perf_counter()
    try:
        result = st.execute(ctx)
    except BaseException as e:
        message = redact(f"{type(e).__name__}: {e}")[:2000] if not isinstance(e, KeyboardInterrupt) else "interrupted"
        store.update_stage(stage_id, status="error", error=message, wall_time=time.perf_counter() - t0)
        raise
    wall = time.perf_counter() - t0
    store.update_stage(stage_id, status="done", outputs={**result, "wall_s": wall}, wall_time=wall)
    result = store.stage(stage_id).outputs  # exactly what a later reuse will read: downstream keys match
    say(f"{st.name}: done in {wall:.0f} s ({st.summary(result)})" if st.summary(result) else
        f"{st.name}: done in {wall:.0f} s")
    return result


def stored_recipe(store: Store, run_id: str) -> Recipe:
    run = store.get_run(run_id)
    return parse_recipe(run.recipe, f"recipe stored with run {run.id}")
