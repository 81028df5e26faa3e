"""The collect stage: the teacher's episodes on the training split, what every distiller learns from.

Episodes the store already holds are reused when they cover everything the recipe asks for (same
env, split, task variations and seeds, same teacher policy), e.g. from `agentdistill collect` or
another recipe; otherwise the teacher is rolled out (a resumable run of kind "collect").
"""

from __future__ import annotations

from typing import Any

from agentdistill.agents.rollout import first_variations, resume_run, run_recipe
from agentdistill.config import PLACEMENT, Recipe, parse_recipe
from agentdistill.envs import make
from agentdistill.pipeline.run import StageContext, StageDef
from agentdistill.store.store import Store


def collect_recipe(recipe: Recipe) -> Recipe:
    c, teacher = recipe.collect, recipe.teacher
    return parse_recipe({
        "name": f"{recipe.name}:collect",
        "env": {"name": recipe.env.name, "split": c.split, "tasks": c.tasks or recipe.env.tasks,
                "variations": c.variations, "options": recipe.env.options},
        "teacher": teacher.model_dump(mode="json", exclude_none=True),
        "runner": {"concurrency": recipe.runner.concurrency, "seeds": c.seeds,
                   "max_steps": c.max_steps or teacher.max_steps or recipe.runner.max_steps,
                   **recipe.runner.model_dump(mode="json", include=set(PLACEMENT))},
    }, "collect stage")


def stage(recipe: Recipe) -> StageDef:
    sub = collect_recipe(recipe)
    key = sub.model_dump(mode="json", exclude={"name": True, "runner": set(PLACEMENT)})
    return StageDef("collect", "collect", key, [], lambda ctx: run(ctx, sub),
                    summary=lambda o: f"{o.get('episodes', 0)} teacher episodes, {o.get('successes', 0)} successful"
                                      + (", reused from the store" if o.get("reused_episodes") else ""))


def stored_teacher_episodes(store: Store, recipe: Recipe, policy_id: str) -> list[int] | None:
    """Ids of stored finished teacher episodes covering the recipe's whole plan, or None if any is missing."""
    env = make(recipe.env.name, **recipe.env.options)
    try:
        tasks = first_variations(env, recipe.env.split, recipe.env.tasks, recipe.env.variations)
    finally:
        env.close()
    wanted = {(t.name, t.variation, seed) for t in tasks for seed in recipe.runner.seeds}
    ids = store.episode_ids("teacher", None, recipe.env.name, None, recipe.env.split, sorted({t.name for t in tasks}))
    found: dict[tuple, int] = {}
    for ep in store.episodes(ids=ids) if ids else []:
        k = (ep.task.name, ep.task.variation, ep.seed)
        if k in wanted and ep.policy_id == policy_id:
            found[k] = ep.id  # the latest wins (ids ascend)
    return sorted(found.values()) if len(found) == len(wanted) else None


def run(ctx: StageContext, sub: Recipe) -> dict[str, Any]:
    store = ctx.store
    from agentdistill.agents.rollout import build_policy

    policy_id = build_policy(sub.teacher, store, sub.env.name).id
    reused = None if ctx.partial.get("run_id") else stored_teacher_episodes(store, sub, policy_id)
    if reused is not None:
        eps = store.episodes(ids=reused)
        return _summary(eps, sorted({e.run_id for e in eps}), reused=True)
    if ctx.partial.get("run_id"):
        run_id = resume_run(store, ctx.partial["run_id"], progress=ctx.progress)
    else:
        run_id = run_recipe(store, sub, progress=ctx.progress, kind="collect",
                            on_start=lambda rid: ctx.record({"run_id": rid}))
    return {"run_id": run_id, **_summary(store.episodes(run_id=run_id, role="teacher"), [run_id])}


def _summary(eps, runs: list[str], reused: bool = False) -> dict[str, Any]:
    done = [e for e in eps if e.status == "done"]
    return {"runs": runs, "episode_ids": [e.id for e in done], "episodes": len(eps), "errors": len(eps) - len(done),
            "successes": sum(bool(e.success) for e in done), "cost": sum(e.cost for e in done),
            "reused_episodes": reused}
