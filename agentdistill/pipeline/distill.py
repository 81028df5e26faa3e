"""Distill stages: each a thin call into its component, reading the collect stage's episodes from the
store and recording what it produced (checkpoint, skill version, demo index, dataset) by id.

| method    | component                         | produces                          |
|-----------|-----------------------------------|-----------------------------------|
| sft       | train/sft.py (TRL SFTTrainer)     | checkpoint (+ its dataset)        |
| opd       | train/opd.py (+ TCOD curricula)   | checkpoint (+ its training run)   |
| skill_sd  | train/opd.py, method skill-sd     | checkpoint (+ its training run)   |
| dagger    | train/dagger.py (labels + TRL SFT)| checkpoint kept on dev (+ labels, datasets)|
| soda      | train/soda.py (TRL DPOTrainer)    | checkpoint (+ its preference data)|
| skills    | skills/trace2skill.py, spark.py   | a skill pack version              |
| icd       | distill/icd.py                    | a demo index                      |
| a plugin  | distill/base.py's Distiller       | a checkpoint, skill pack or policy|
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from agentdistill.config import (DAggerStage, ICDStage, OPDStage, PluginStage, Recipe, SFTStage, SkillSDStage,
                                 SkillsStage, SODAStage)
from agentdistill.errors import AgentDistillError
from agentdistill.pipeline.run import StageContext, StageDef

log = logging.getLogger(__name__)


def stage(recipe: Recipe, d) -> StageDef:
    deps = ["collect"]
    init = getattr(d, "init", "base")
    if init != "base":
        deps.append(f"distill.{init}")
    skill = getattr(d, "skill", None) if d.method in ("opd", "skill_sd") else None
    if skill and any(o.name == skill for o in recipe.distill):
        deps.append(f"distill.{skill}")
    student = recipe.student
    config = {"spec": d.model_dump(mode="json"), "env": recipe.env.model_dump(mode="json", include={"name", "options"}),
              # what shapes the student's prompts and rollouts: training data must match them
              "student": student.model_dump(mode="json", include={"model", "history", "max_tokens"}),
              "max_steps": student.max_steps or recipe.runner.max_steps}
    run = {"sft": sft, "opd": opd, "skill_sd": opd, "dagger": dagger, "soda": soda, "skills": skills,
           "icd": icd}.get(d.method, plugin)
    return StageDef(f"distill.{d.name}", "distill", config, deps, lambda ctx: run(ctx, d),
                    still_there=_artifacts_exist, summary=_summary)


def _artifacts_exist(outputs: dict[str, Any]) -> bool:
    paths = [outputs[k] for k in ("path", "index") if outputs.get(k)] + list(outputs.get("paths") or [])
    return all(Path(p).exists() for p in paths)


def _summary(o: dict[str, Any]) -> str:
    if "checkpoint_id" in o:
        return f"checkpoint {o['checkpoint_id']} at {o['path']}"
    if "skill" in o:
        return f"skill {o['skill']} v{o['version']}"
    if "index" in o:
        return f"demo index {o['index']} ({o.get('entries', '?')} teacher steps)"
    if "policy" in o:
        return f"policy {o['policy'].get('policy')}"
    return ""


def base_model(ctx: StageContext, init: str) -> str:
    """The model id a training stage starts from: the base student, or an earlier stage's checkpoint."""
    return ctx.recipe.student.model if init == "base" else ctx.outputs[f"distill.{init}"]["model"]


def _collected(ctx: StageContext) -> dict[str, Any]:
    out = ctx.outputs["collect"]
    if not out.get("successes"):
        raise AgentDistillError("the collect stage stored no successful teacher episode: nothing to distill "
                                "(check the teacher, or raise collect.max_steps)")
    return out


def _lora(d):
    from agentdistill.train.model import LoraSpec

    return None if d.full else LoraSpec(r=d.lora.r, alpha=d.lora.alpha, dropout=d.lora.dropout) if d.lora else None


def _checkpoint(result, **extra) -> dict[str, Any]:
    return {"checkpoint_id": result.checkpoint_id, "path": str(result.path), "model": f"local/{result.path}", **extra}


# ---- training -------------------------------------------------------------------------------------
def sft(ctx: StageContext, d: SFTStage) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from agentdistill.train.data import EpisodeFilter, build_sft_dataset
    from agentdistill.train.model import Hardware, base_checkpoint
    from agentdistill.train.sft import SFTSpec, train_sft

    collected = _collected(ctx)
    start = base_model(ctx, d.init)
    tok = AutoTokenizer.from_pretrained(base_checkpoint(start))
    out = ctx.artifact("checkpoints", d.name)
    dataset_id, ds = build_sft_dataset(
        ctx.store, tok, out.with_name(out.name + ".data"),
        EpisodeFilter(role="teacher", success=True, env=ctx.recipe.env.name, ids=collected["episode_ids"]),
        window=ctx.recipe.student.history, unit=d.unit, max_length=d.max_length, name=f"{ctx.recipe.name}-{d.name}")
    lora = _lora(d)
    spec = SFTSpec(base_model=start, lora=lora, epochs=d.epochs, max_steps=d.max_steps,
                   learning_rate=d.learning_rate or (1e-3 if lora else 5e-5), batch_size=d.batch_size,
                   grad_accum=d.grad_accum, max_length=d.max_length, seed=d.seed, save_epochs=bool(d.dev_variations))
    ctx.say(f"  SFT on {len(ds)} chats from {collected['successes']} teacher episodes ({'LoRA' if lora else 'full'})")
    result = train_sft(ctx.store, ds, out, spec, Hardware.pick(), dataset_id)
    metrics = {k: result.metrics.get(k) for k in ("first_loss", "last_loss", "steps", "tokens", "wall_s")}
    if not d.dev_variations:
        return _checkpoint(result, dataset_id=dataset_id, metrics=metrics)
    # the start and each epoch's weights on dev: the best is kept (the start unless an epoch beats it)
    from agentdistill.train.model import base_checkpoint, record_checkpoint
    from agentdistill.train.selection import Candidate

    # the final weights stand for the last epoch (a max_steps run may end between two epochs' ends)
    earlier = result.epochs[:-1]
    candidates = ([Candidate("init", start)] + [Candidate(f"epoch-{i}", f"local/{p}") for i, p in enumerate(earlier, 1)]
                  + [Candidate("final", f"local/{result.path}")])
    kept = choose_on_dev(ctx, d.name, candidates, d.dev_variations)
    path = base_checkpoint(kept.model)
    checkpoint_id = result.checkpoint_id
    if path.resolve() != Path(result.path).resolve():
        checkpoint_id = record_checkpoint(ctx.store, path, start, "sft", dataset_id=dataset_id,
                                          metrics={**result.metrics, "kept": kept.as_dict()})
    return {"checkpoint_id": checkpoint_id, "path": str(path), "model": kept.model, "dataset_id": dataset_id,
            "metrics": metrics, "kept": kept.name, "dev_success": kept.dev_success,
            "candidates": [c.as_dict() for c in candidates]}


def choose_on_dev(ctx: StageContext, name: str, candidates: list, variations: int):
    """Score each candidate on the recipe's dev tasks (the student's prompt, greedy) and return the best."""
    from agentdistill.models.registry import release_in_process_models
    from agentdistill.train.selection import best

    recipe = ctx.recipe
    dev = dev_set(ctx, variations)
    try:
        for c in candidates:
            dev.score(ctx.store, c, f"select-{recipe.name}-{name}-{c.name}")
            release_in_process_models()
    finally:
        dev.pool.close()
    kept = best(candidates)
    ctx.say("  dev: " + ", ".join(f"{c.name} {c.dev_success:.0%}" for c in candidates) + f"; kept {kept.name}")
    return kept


def dev_set(ctx: StageContext, variations: int):
    """The recipe's dev tasks (the collect stage's task names, dev split) and a greedy student to play them."""
    from agentdistill.agents.rollout import build_policy, first_variations
    from agentdistill.agents.runner import EnvPool
    from agentdistill.envs import make
    from agentdistill.train.selection import DevSet

    recipe = ctx.recipe
    env = make(recipe.env.name, **recipe.env.options)
    try:
        tasks = first_variations(env, "dev", recipe.collect.tasks or recipe.env.tasks, variations)
    except BaseException:
        env.close()
        raise
    student = recipe.student
    pool = EnvPool(lambda: make(recipe.env.name, **recipe.env.options), recipe.runner.concurrency, env)
    return DevSet(tasks, lambda m: build_policy(student.model_copy(update={"model": m, "temperature": 0.0}),
                                                ctx.store, recipe.env.name),
                  student.max_steps or recipe.runner.max_steps, pool, recipe.runner.concurrency)


def opd(ctx: StageContext, d: OPDStage | SkillSDStage) -> dict[str, Any]:
    from agentdistill.train.curriculum import Curriculum
    from agentdistill.train.model import Hardware
    from agentdistill.train.opd import OPDSpec, train_opd

    recipe, collected = ctx.recipe, _collected(ctx)
    c, student = recipe.collect, recipe.student
    skills = [_skill_file(ctx, d.skill)] if d.skill else []
    spec = OPDSpec(
        student=base_model(ctx, d.init), teacher=d.teacher_model, context=d.context, skills=skills,
        method="skill-sd" if d.method == "skill_sd" else "opd", divergence=d.divergence,
        curriculum=Curriculum(d.curriculum, d.k_start, d.eta, d.k_max), env=recipe.env.name,
        env_options=dict(recipe.env.options), split=c.split, tasks=c.tasks or recipe.env.tasks, variations=c.variations,
        iterations=d.iterations, episodes_per_iteration=d.episodes_per_iteration,
        rollout_concurrency=d.rollout_concurrency, rollout_backend=d.rollout_backend,
        max_steps=d.max_steps or student.max_steps or recipe.runner.max_steps, history=student.history,
        max_tokens=student.max_tokens, temperature=d.temperature, learning_rate=d.learning_rate or 1e-4,
        lora=_lora(d), max_length=d.max_length, grpo_weight=getattr(d, "grpo_weight", 0.0),
        self_teacher=d.self_teacher, anchor_kl=d.anchor_kl, dev_variations=d.dev_variations,
        select_every=d.select_every, seed=d.seed)
    ctx.say(f"  {spec.method_name}: {d.iterations} iterations x {d.episodes_per_iteration} student episodes "
            f"(teacher: {d.teacher_model or 'self + ' + d.context + ' context'})")
    result = train_opd(ctx.store, spec, ctx.artifact("checkpoints", d.name))
    if result.kept.get("dev_success") is not None:
        ctx.say(f"  kept {result.kept['name']}: dev success {result.kept['dev_success']:.0%}")
    return _checkpoint(result, run_id=result.run_id, teacher_episodes=len(collected["episode_ids"]),
                       kept=result.kept.get("name"), dev_success=result.kept.get("dev_success"))


def dagger(ctx: StageContext, d: DAggerStage) -> dict[str, Any]:
    from agentdistill.train.dagger import dagger_setup, train_dagger
    from agentdistill.train.dagger_config import DAggerConfig

    recipe, collected = ctx.recipe, _collected(ctx)
    c, student = recipe.collect, recipe.student
    config = DAggerConfig(**d.model_dump(include=set(DAggerConfig.model_fields)))
    # the recipe's [teacher] labels (with its price) unless the stage names another teacher
    same = d.teacher is None or (d.teacher == "expert" and recipe.teacher.policy == "expert")
    setup = dagger_setup(ctx.store, config, student_spec=student, teacher=recipe.teacher if same else d.teacher,
                         env=recipe.env.name, env_options=recipe.env.options, task_names=c.tasks or recipe.env.tasks,
                         split=c.split, variations=c.variations, start=base_model(ctx, d.init),
                         teacher_episodes=collected["episode_ids"], max_steps=student.max_steps or recipe.runner.max_steps,
                         lora=_lora(d), learning_rate=d.learning_rate or (1e-3 if _lora(d) else 5e-5),
                         max_length=d.max_length, seed=d.seed)
    ctx.say(f"  dagger: {d.rounds} rounds x {d.episodes_per_round} student episodes, labels by {setup.labeller.id} "
            f"({d.label}), beta {d.beta}" + (f", kept on {len(setup.dev_tasks)} dev tasks" if setup.dev_tasks else ""))
    result = train_dagger(ctx.store, config, setup, ctx.artifact("checkpoints", d.name), say=ctx.say)
    return {"checkpoint_id": result.checkpoint_id, "path": str(result.path), "model": result.model,
            "run_id": result.run_id, "kept": result.kept["name"], "dev_success": result.kept["dev_success"],
            "labels": sum(r["labels"] for r in result.rounds),
            "label_cost": sum(r["label_cost"] for r in result.rounds)}


def soda(ctx: StageContext, d: SODAStage) -> dict[str, Any]:
    from agentdistill.train.model import Hardware
    from agentdistill.train.soda import SODASpec, train_soda

    collected = _collected(ctx)
    student = ctx.recipe.student
    lora = _lora(d)
    spec = SODASpec(base_model=base_model(ctx, d.init), lora=lora, beta=d.beta, sft_weight=d.sft_weight,
                    epochs=d.epochs, max_steps=d.max_steps, batch_size=d.batch_size,
                    learning_rate=d.learning_rate or (5e-5 if lora else 5e-6), max_length=d.max_length, seed=d.seed,
                    window=student.history, snapshot_max_tokens=student.max_tokens,
                    snapshot_temperature=d.snapshot_temperature)
    out = ctx.artifact("checkpoints", d.name)
    result = train_soda(ctx.store, collected["episode_ids"], out, spec, Hardware.pick(), say=ctx.say)
    return _checkpoint(result, dataset_id=result.dataset_id, pairs=result.metrics.get("pairs"))


# ---- skills and demos -----------------------------------------------------------------------------
def skill_name(ctx: StageContext, d: SkillsStage) -> str:
    return d.skill or f"{ctx.recipe.name}-{d.name}".lower().replace("_", "-")[:64]


def skills(ctx: StageContext, d: SkillsStage) -> dict[str, Any]:
    from agentdistill.train.data import EpisodeFilter

    collected = _collected(ctx)
    name = skill_name(ctx, d)
    if d.distiller == "trace2skill":
        from agentdistill.skills.trace2skill import LLMAnalyst, TraceAnalyst, distill

        episodes = EpisodeFilter(role="teacher", success=None, ids=collected["episode_ids"]).select(ctx.store)
        if d.analyst == "trace":
            analyst = TraceAnalyst()
        else:
            from agentdistill.models import make_model

            analyst = LLMAnalyst(make_model(d.analyst))
        from agentdistill.agents.rollout import connect_executor

        # on a Ray cluster each trajectory's analyst is a Ray task on some node
        version = distill(ctx.store, episodes, name=name, analyst=analyst,
                          cluster=connect_executor(ctx.store, ctx.recipe)).version
        return {"skill": version.name, "version": version.version, "skill_version_id": version.id}
    return _spark(ctx, d, name)


def _spark(ctx: StageContext, d: SkillsStage, name: str) -> dict[str, Any]:
    """SPARK explores the training tasks with the student as a cascade over the recipe's teacher (a student
    alone rarely passes, and only verified passes become evidence)."""
    from agentdistill.agents.rollout import build_policy, connect_executor, first_variations
    from agentdistill.config import PolicySpec
    from agentdistill.envs import make
    from agentdistill.skills.spark import TraceReflector, distill_spark, run_spark

    recipe = ctx.recipe
    spec = PolicySpec.model_validate({**recipe.student.model_dump(mode="json", exclude_none=True), "policy": "cascade",
                                      "n": 3, "temperature": 0.7, "threshold": 0.5,
                                      "fallback": recipe.teacher.model_dump(mode="json", exclude_none=True)})
    policy = build_policy(spec, ctx.store, recipe.env.name)
    env = make(recipe.env.name, **recipe.env.options)
    try:
        tasks = first_variations(env, recipe.collect.split, recipe.collect.tasks or recipe.env.tasks, d.variations)
    finally:
        env.close()
    run_id, outcomes = run_spark(ctx.store, policy, recipe.env.name, tasks, max_attempts=d.attempts,
                                 max_steps=recipe.student.max_steps or recipe.runner.max_steps, pdi=d.pdi,
                                 reflector=TraceReflector(), env_options=dict(recipe.env.options),
                                 run_name=f"spark-{name}", concurrency=recipe.runner.concurrency,
                                 cluster=connect_executor(ctx.store, recipe), policy_spec=spec.model_dump(mode="json"))
    ctx.record({"run_id": run_id})
    version = distill_spark(ctx.store, outcomes, name, run_id)
    return {"skill": version.name, "version": version.version, "skill_version_id": version.id, "run_id": run_id,
            "solved": version.metrics.get("solved"), "tasks": version.metrics.get("tasks")}


def _skill_file(ctx: StageContext, ref: str) -> str:
    """A skills stage's pack written out (its SKILL.md is the teacher's context), or a given path."""
    out = ctx.outputs.get(f"distill.{ref}")
    if out is None:
        return ref
    from agentdistill.skills import library

    version = library.get(ctx.store, out["skill"], out["version"])
    return str(version.pack.write(ctx.artifact("skills", ref) / version.name))


def icd(ctx: StageContext, d: ICDStage) -> dict[str, Any]:
    from agentdistill.distill.icd import DemoIndex

    collected = _collected(ctx)
    c = ctx.recipe.collect
    # filtered by the collect runs (not by task): an ICD student's spec names exactly these, so the index
    # is found up to date at evaluation time instead of being rebuilt
    index = DemoIndex.build(ctx.store, ctx.artifact("icd", d.name), env=ctx.recipe.env.name, runs=collected["runs"],
                            split=c.split, method=d.retrieval)
    return {"index": str(index.path), "runs": collected["runs"], "entries": len(index.entries),
            "retrieval": index.meta["method"]}


# ---- plugins --------------------------------------------------------------------------------------
def plugin(ctx: StageContext, d: PluginStage) -> dict[str, Any]:
    """A plugin's Distiller (distill/base.py): made with the stage's options, given the collected episodes, its
    product recorded in the outputs the built-in methods use (so eval arms and later stages read it alike)."""
    from agentdistill.config import PolicySpec
    from agentdistill.distill.base import DistillContext, Distilled
    from agentdistill.plugins import first_line

    collected = _collected(ctx)
    cls = d.distiller()
    workdir = ctx.artifact("plugins", d.name)
    workdir.mkdir(parents=True)
    dctx = DistillContext(ctx.store, ctx.recipe, d.name, list(collected["episode_ids"]), base_model(ctx, d.init),
                          workdir, ctx.say)
    ctx.say(f"  {d.method}: a plugin distiller producing a {cls.produces}")
    try:
        result = cls(**d.options).distill(dctx)
    except AgentDistillError:
        raise
    except Exception as e:  # the plugin's own failure: one line for the user, its traceback in the debug log
        log.debug("distill stage %s (%s)", d.name, d.method, exc_info=True)
        raise AgentDistillError(f"distill.{d.name}: the plugin distiller {d.method!r} failed ({first_line(e)}): "
                                "fix it and run again, or --resume (--verbose shows where)") from None
    if not isinstance(result, Distilled):
        raise AgentDistillError(f"distill.{d.name}: {d.method}.distill returned {type(result).__name__}, not a "
                                "Distilled (agentdistill.distill.base)")
    where = f"distill.{d.name}: {d.method} produces a {cls.produces} but"
    out: dict[str, Any] = {"paths": [str(p) for p in result.paths], "metrics": result.metrics}
    if cls.produces == "checkpoint":
        if not result.model:
            raise AgentDistillError(f"{where} returned no model: set Distilled(model=\"local/<dir>\")")
        out["model"] = result.model
        if result.model.startswith("local/"):  # weights on disk: a checkpoint row, and reuse while they exist
            from agentdistill.train.model import base_checkpoint, record_checkpoint

            path = base_checkpoint(result.model)
            checkpoint_id = result.checkpoint_id
            if checkpoint_id is None:
                checkpoint_id = record_checkpoint(ctx.store, path, dctx.start_model, d.method, metrics=result.metrics)
            out.update(checkpoint_id=checkpoint_id, path=str(path))
    elif cls.produces == "skill":
        if result.skill is None:
            raise AgentDistillError(f"{where} returned no skill: set Distilled(skill=SkillPack.new(...))")
        from agentdistill.skills import library

        version = library.save(ctx.store, result.skill, distiller=d.method, metrics=result.metrics)
        out.update(skill=version.name, version=version.version, skill_version_id=version.id)
    else:
        if not result.policy:
            raise AgentDistillError(f"{where} returned no policy: set Distilled(policy={{\"policy\": ..., "
                                    "\"options\": {...}})")
        try:
            spec = PolicySpec.model_validate(result.policy)
        except ValidationError as e:
            raise AgentDistillError(f"{where} its policy is not a valid policy table: {e.errors()[0]['msg']}") from None
        out["policy"] = spec.model_dump(mode="json", exclude_defaults=True) | {"policy": spec.policy}
    return out
