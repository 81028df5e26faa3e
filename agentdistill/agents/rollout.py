"""Recipe -> policies, plan and runner: what `agentdistill run` and `collect` execute."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import defaultdict
from collections.abc import Callable

from agentdistill.agents.cascade import CascadePolicy
from agentdistill.agents.kept import Kept
from agentdistill.agents.policies import ExpertPolicy, LLMPolicy, Policy
from agentdistill.distill.icd import DemoIndex, Retrieval
from agentdistill.agents.runner import EnvPool, Executor, LocalExecutor, Runner, _close_quietly, make_plan
from agentdistill.config import PolicySpec, Recipe, parse_recipe
from agentdistill.envs import Env, Task, make
from agentdistill.errors import AgentDistillError, EnvNotReady, RunFailed
from agentdistill.secrets import redact
from agentdistill.models import make_model
from agentdistill.models.registry import IN_PROCESS
from agentdistill.models.cost import Price
from agentdistill.store.store import Store

log = logging.getLogger(__name__)


def build_policy(spec: PolicySpec, store: Store | None = None, env_name: str = "scienceworld") -> Policy:
    if spec.is_plugin:
        return plugin_policy(spec.policy, spec.options)
    if spec.policy == "expert":
        return ExpertPolicy(spec.price.per_action if spec.price else 0.0)
    if spec.policy == "cascade":
        student = build_policy(spec.model_copy(update={"policy": "llm", "fallback": None}), store, env_name)
        return CascadePolicy(student, build_policy(spec.fallback, store, env_name), spec.threshold, spec.require_admissible)
    retrieval = None
    if spec.icd:
        if store is None:
            raise AgentDistillError("an ICD student needs the store its teacher demos come from")
        icd = spec.icd
        index = DemoIndex.load_or_build(
            store, icd.index or default_index_dir(env_name), env=env_name, runs=icd.runs, split=icd.split, method=icd.method
        )
        retrieval = Retrieval(index, icd.k, icd.unit, icd.window)
    options: dict = {}
    if spec.price:
        options["price"] = Price(spec.price.input_per_mtok, spec.price.output_per_mtok)
    if not spec.model.startswith(IN_PROCESS):  # in-process models take no server options
        options.update(
            api_base=spec.api_base, api_key_env=spec.api_key_env, timeout=spec.timeout, max_retries=spec.max_retries
        )
    model = make_model(spec.model, **options)
    skills = resolve_skills(spec.skills, store) if spec.skills else None
    return LLMPolicy(
        model,
        temperature=spec.temperature,
        max_tokens=spec.max_tokens,
        n=spec.n,
        history=spec.history,
        match_admissible=spec.match_admissible,
        retrieval=retrieval,
        skills=skills,
        skill_mode=spec.skill_mode,
    )


def plugin_policy(name: str, options: dict) -> Policy:
    """A plugin policy made from its recipe table (`Class(**options)`), resolved by name as in every process
    (driver, Ray actor, resumed run); episodes record its `id`, which defaults to the name it was given by."""
    from agentdistill.agents.policies import policy_class
    from agentdistill.plugins import first_line

    cls = policy_class(name)
    try:
        policy = cls(**options)
    except AgentDistillError:
        raise
    except Exception as e:  # its constructor's failure, in one line (a bad option value, a missing file, ...)
        log.debug("making policy %s", name, exc_info=True)
        raise AgentDistillError(redact(f"policy {name!r} failed to start ({first_line(e)}): check its options "
                                       "(--verbose shows where)")) from None
    if not getattr(policy, "id", None):
        policy.id = name
    return policy


def resolve_skills(refs: list[str], store: Store | None):
    """Library names ("name", "name@3") or pack directories -> [(pack, version id)]. A directory is
    stored in the library first, so every episode names the exact version it ran with."""
    from pathlib import Path

    from agentdistill.skills import library
    from agentdistill.skills.pack import SkillPack

    if store is None:
        raise AgentDistillError("a policy with skills needs the store (the skill library)")
    out = []
    for ref in refs:
        if Path(ref).is_dir():
            v = library.save(store, SkillPack.load(ref), distiller="import")
        else:
            name, _, version = ref.partition("@")
            if version and not version.isdigit():
                raise AgentDistillError(f"skill {ref!r}: write a version as name@3")
            v = library.get(store, name, int(version) if version else None)
        out.append((v.pack, v.id))
    return out


def default_index_dir(env_name: str) -> str:
    return f".agentdistill/icd/{env_name}"


def select_tasks(env: Env, recipe: Recipe) -> list[Task]:
    return first_variations(env, recipe.env.split, recipe.env.tasks, recipe.env.variations)


def first_variations(env: Env, split: str, names: list[str] | None, variations: int | None) -> list[Task]:
    """The first `variations` variations (None: all) of each named task (None: every task) in the split."""
    by_name: dict[str, list[Task]] = defaultdict(list)
    for t in env.tasks(split, names):
        by_name[t.name].append(t)
    tasks = [t for group in by_name.values() for t in (group[:variations] if variations else group)]
    if not tasks:
        raise AgentDistillError(f"no {env.name} tasks in split {split!r} for tasks {', '.join(names or []) or 'any'}")
    return tasks


def _close_envs(pairs: list[tuple], wait: bool) -> None:
    envs = [env for _, env in pairs]
    if wait:
        _close_quietly(*envs)
    else:
        threading.Thread(target=_close_quietly, args=envs, name="agentdistill-close-envs", daemon=True).start()


# env instances of local runs kept for this process's next run on the same env (`runner.keep_envs_s`)
KEPT_ENVS = Kept("env", _close_envs)


def env_key(recipe: Recipe) -> tuple:
    return recipe.env.name, json.dumps(recipe.env.options, sort_keys=True, default=str)


def kept_or_new_env(recipe: Recipe) -> Env:
    """An env instance an earlier local run of this process kept for the same env, else a new one."""
    return KEPT_ENVS.take(env_key(recipe)) or _new_env(recipe)


def _new_env(recipe: Recipe) -> Env:
    KEPT_ENVS.stop_others(env_key(recipe))  # kept instances of another env would only hold memory now
    return start_env(recipe.env.name, recipe.env.options)


def open_env(recipe: Recipe) -> Env:
    """Start the recipe's environment (or take a kept instance) and check that its split and tasks exist: one
    line on any problem, before anything is written to the store."""
    env = KEPT_ENVS.take(env_key(recipe))
    if env is not None:
        try:
            select_tasks(env, recipe)
            return env
        except AgentDistillError:  # the recipe's own problem: a new instance would say the same
            env.close()
            raise
        except Exception as e:  # it died while idle (a JVM gone): a new one checks the recipe
            log.info("a kept %s instance failed (%s): starting a new one", recipe.env.name, e)
            _close_quietly(env)
    env = _new_env(recipe)
    try:
        select_tasks(env, recipe)
    except BaseException:
        env.close()
        raise
    return env


def start_env(name: str, options: dict) -> Env:
    try:
        return make(name, **options)
    except AgentDistillError:
        raise
    except Exception as e:  # a JVM that died while starting, a browser that would not launch, ...
        raise EnvNotReady(redact(f"environment {name!r} failed to start: {type(e).__name__}: {e}")[:500]) from None


def run_recipe(store: Store, recipe: Recipe, *, progress: bool = True, kind: str = "rollout",
               on_start: Callable[[str], None] | None = None, env: Env | None = None) -> str:
    """Start a new run for the recipe and execute it; returns the run id. `on_start(run_id)` is called
    once the run exists, before any episode (a pipeline records it so the run can be resumed). `env`:
    an instance from `open_env`, already checked (else one is started here)."""
    actors = None
    try:
        # the driver's policies come first on a cluster (they may save a pack or build a demo index the actors
        # then read)
        policies, actors = _policies_and_actors(store, recipe)
        env, tasks = _tasks(recipe, env, actors)  # fail before creating a run
        policies = policies or build_policies(store, recipe)
        run_id = store.create_run(recipe.name, recipe.model_dump(mode="json"), kind=kind)
        if on_start:
            on_start(run_id)
    except BaseException:
        _close_quietly(actors, env)
        raise
    _execute(store, run_id, recipe, policies, progress, tasks, env, actors)
    return run_id


def _tasks(recipe: Recipe, env: Env | None, actors: Executor | None) -> tuple[Env | None, list]:
    """The run's tasks and the env this process keeps: on a cluster, the first actor's env lists them and
    this process starts none (unless the caller already opened one); locally, this process's env lists them
    and plays the first episodes."""
    if actors is not None and env is None:
        return None, actors.tasks()
    env = env or open_env(recipe)
    return env, select_tasks(env, recipe)


def resume_run(store: Store, run_id: str, *, progress: bool = True) -> str:
    """Finish a crashed or interrupted run without duplicating its finished episodes; errored episodes get
    up to `max_attempts` new attempts (their failed ones stay stored)."""
    run = store.get_run(run_id)
    recipe = parse_recipe(run.recipe, f"recipe stored with run {run.id}")
    env = actors = None
    try:
        policies, actors = _policies_and_actors(store, recipe)
        env, tasks = _tasks(recipe, None, actors)
        policies = policies or build_policies(store, recipe)
        store.set_run_status(run.id, "running")
    except BaseException:
        _close_quietly(actors, env)
        raise
    _execute(store, run.id, recipe, policies, progress, tasks, env, actors)
    return run.id


def build_policies(store: Store, recipe: Recipe) -> dict[str, Policy]:
    return {role: build_policy(spec, store, recipe.env.name) for role, spec in recipe.roles().items()}


def _policies_and_actors(store: Store, recipe: Recipe) -> tuple[dict[str, Policy] | None, Executor | None]:
    """(None, None) for the local executor; for "ray", the driver's policies and the run's env actors,
    starting on the cluster (one line on an unreachable address, missing resources, or a SQLite store
    shared with other machines)."""
    cluster = connect_executor(store, recipe)
    if cluster is None:
        return None, None
    from agentdistill.agents.ray_executor import RayExecutor

    size = cluster.actors_the_store_takes(recipe.runner.concurrency)
    policies = build_policies(store, recipe)
    return policies, RayExecutor(cluster, recipe.model_dump(mode="json"), max_steps_per_role(recipe), size,
                                 recipe.runner.keep_envs_s)


def max_steps_per_role(recipe: Recipe) -> dict[str, int]:
    return {role: spec.max_steps or recipe.runner.max_steps for role, spec in recipe.roles().items()}


def connect_executor(store: Store, recipe: Recipe):
    """None for the local executor; for "ray", a checked connection to the cluster (one line on an unreachable
    address, missing resources, or a SQLite store shared with other machines)."""
    if recipe.runner.executor != "ray":
        return None
    from agentdistill.agents.ray_executor import RayCluster

    r = recipe.runner
    return RayCluster(r.address, store,
                      cpus=r.cpus_per_episode, gpus=r.gpus_per_episode, resources=r.resources)


def _execute(store: Store, run_id: str, recipe: Recipe, policies: dict[str, Policy], progress: bool, tasks: list,
             first: Env | None, actors: Executor | None = None) -> None:
    """Play the run's plan of `tasks` on `actors` (a cluster's, from `_policies_and_actors`) or, without them,
    in this process on a pool of envs that starts with `first`."""
    executor: Executor | None = actors
    plan = make_plan(list(recipe.roles()), tasks, recipe.runner.seeds)
    try:
        if actors is not None and first is not None:  # the caller's env only checked the recipe
            first.close()
            first = None
        if executor is None:
            executor = LocalExecutor(EnvPool(lambda: kept_or_new_env(recipe), recipe.runner.concurrency, first),
                                     keep=lambda envs: KEPT_ENVS.put(env_key(recipe), envs, recipe.runner.keep_envs_s))
        runner = Runner(store, run_id, policies, max_steps_per_role(recipe), recipe.runner.max_attempts)
        asyncio.run(runner.run(plan, executor, recipe.runner.concurrency, progress=progress))
    except BaseException:
        store.set_run_status(run_id, "error")
        raise
    finally:
        if executor is not None:
            executor.close()
        elif first is not None:
            first.close()
    failed = sum(e.status == "error" for e in store.episodes(run_id=run_id, with_calls=False))
    if failed / max(len(plan), 1) > recipe.runner.fail_on_error:
        store.set_run_status(run_id, "error")
        raise RunFailed(f"run {run_id}: {failed} of {len(plan)} episodes ended in error after up to "
                        f"{recipe.runner.max_attempts} attempt(s), above runner.fail_on_error = "
                        f"{recipe.runner.fail_on_error:g}: see `agentdistill runs show {run_id} --episodes`")
    store.set_run_status(run_id, "done")
