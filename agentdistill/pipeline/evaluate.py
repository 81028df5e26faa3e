"""Eval stages: one arm each, on the held-out tasks of [env] with the same tasks and seeds for every arm.

An arm is a policy built from the base student and what distill stages produced: `base`; `teacher`
(the ceiling); a training stage's checkpoint; the base student with a skills stage's pack or an icd
stage's demos; a plugin distiller's policy; or an [[eval.arm]] combining them, e.g. a cascade whose student is
the SFT checkpoint, or playing a plugin policy.
Each arm is an ordinary, resumable rollout run (kind "eval") whose recipe is stored with it.
"""

from __future__ import annotations

from typing import Any

from agentdistill.agents.rollout import resume_run, run_recipe
from agentdistill.config import PLACEMENT, ArmSpec, Recipe, parse_recipe, product
from agentdistill.pipeline.run import StageContext, StageDef

CASCADE_SAMPLES, CASCADE_TEMPERATURE = 3, 0.7


def arm_definition(recipe: Recipe, arm: str) -> ArmSpec | None:
    """What an arm is made of (None for the teacher)."""
    if arm == "teacher":
        return None
    if arm == "base":
        return ArmSpec(name="base")
    for d in recipe.distill:
        if d.name == arm:
            kind = product(d)
            if kind in ("checkpoint", "policy"):  # the stage's model, or the policy a plugin distilled
                return ArmSpec(name=arm, model=arm)
            return ArmSpec(name=arm, skills=[arm]) if kind == "skills" else ArmSpec(name=arm, icd=arm)
    return next(a for a in recipe.eval.arm if a.name == arm)


def stage(recipe: Recipe, arm: str) -> StageDef:
    definition = arm_definition(recipe, arm)
    deps = []
    if definition is not None:
        uses = ([definition.model] if definition.model != "base" else []) + definition.skills + (
            [definition.icd] if definition.icd else [])
        deps = [f"distill.{u}" for u in dict.fromkeys(uses)]
    config = {"arm": definition.model_dump(mode="json") if definition else "teacher",
              "env": eval_env(recipe), "runner": {k: v for k, v in eval_runner(recipe).items() if k not in PLACEMENT},
              "teacher": recipe.teacher.model_dump(mode="json"), "student": recipe.student.model_dump(mode="json")}
    return StageDef(f"eval.{arm}", "eval", config, deps, lambda ctx: run(ctx, arm, definition),
                    summary=_summary)


def eval_env(recipe: Recipe) -> dict[str, Any]:
    env = recipe.env.model_dump(mode="json")
    if recipe.eval and recipe.eval.variations:
        env["variations"] = recipe.eval.variations
    return env


def eval_runner(recipe: Recipe) -> dict[str, Any]:
    runner = recipe.runner.model_dump(mode="json")
    if recipe.eval and recipe.eval.seeds is not None:
        runner["seeds"] = recipe.eval.seeds
    return runner


def arm_policy(ctx: StageContext, definition: ArmSpec | None) -> tuple[str, dict[str, Any]]:
    """(role, policy spec) of an arm, with the distill stages' products filled in."""
    recipe = ctx.recipe
    teacher = recipe.teacher.model_dump(mode="json", exclude_none=True)
    if definition is None:
        return "teacher", teacher
    # a plugin policy plays under the student's step limit, as every other student arm
    limit = {"max_steps": recipe.student.max_steps} if recipe.student.max_steps else {}
    if definition.policy not in ("llm", "cascade"):  # an [[eval.arm]] playing a plugin policy
        return "student", {"policy": definition.policy, "options": definition.options, **limit}
    spec = recipe.student.model_dump(mode="json", exclude_none=True)
    if definition.model != "base":
        out = ctx.outputs[f"distill.{definition.model}"]
        if "policy" in out:  # a plugin distiller's product: the arm plays that policy
            return "student", {**out["policy"], **limit}
        spec["model"] = out["model"]
    if definition.skills:
        from agentdistill.pipeline.distill import SkillsStage

        packs = [ctx.outputs[f"distill.{s}"] for s in definition.skills]
        spec["skills"] = [f"{p['skill']}@{p['version']}" for p in packs]
        modes = {d.skill_mode for d in recipe.distill if isinstance(d, SkillsStage) and d.name in definition.skills}
        spec["skill_mode"] = modes.pop() if len(modes) == 1 else "inline"
    if definition.icd:
        stage = next(d for d in recipe.distill if d.name == definition.icd)
        out = ctx.outputs[f"distill.{definition.icd}"]
        spec["icd"] = {"index": out["index"], "k": stage.k, "unit": stage.unit, "window": stage.window,
                       "split": recipe.collect.split, "runs": out["runs"], "method": stage.retrieval}
    if definition.policy == "cascade":
        spec.update(policy="cascade", n=definition.n or CASCADE_SAMPLES, threshold=definition.threshold,
                    temperature=CASCADE_TEMPERATURE if definition.temperature is None else definition.temperature,
                    fallback=teacher)
    else:
        if definition.n is not None:
            spec["n"] = definition.n
        if definition.temperature is not None:
            spec["temperature"] = definition.temperature
    return "student", spec


def arm_recipe(ctx: StageContext, arm: str, definition: ArmSpec | None) -> Recipe:
    role, spec = arm_policy(ctx, definition)
    return parse_recipe({"name": f"{ctx.recipe.name}:{arm}", "env": eval_env(ctx.recipe), role: spec,
                         "runner": eval_runner(ctx.recipe)}, f"eval arm {arm}")


def run(ctx: StageContext, arm: str, definition: ArmSpec | None) -> dict[str, Any]:
    store = ctx.store
    if ctx.partial.get("run_id"):
        run_id = resume_run(store, ctx.partial["run_id"], progress=ctx.progress)
    else:
        run_id = run_recipe(store, arm_recipe(ctx, arm, definition), progress=ctx.progress, kind="eval",
                            on_start=lambda rid: ctx.record({"run_id": rid}))
    eps = store.episodes(run_id=run_id)
    return {"run_id": run_id, "role": eps[0].role if eps else "student", "episodes": len(eps),
            "successes": sum(bool(e.success) for e in eps), "errors": sum(e.status == "error" for e in eps)}


def _summary(o: dict[str, Any]) -> str:
    return f"{o.get('successes', 0)}/{o.get('episodes', 0)} won, run {o.get('run_id')}"
