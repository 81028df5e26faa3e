"""Async rollout runner: policies x env x tasks -> the store.

Many episodes run at once under a concurrency limit, each on an env instance from a pool (one
instance per concurrent episode; envs like ScienceWorld are a JVM each). Every step is committed
before the next action is chosen. An episode whose env or model fails is recorded as an error and
the run goes on. The plan (which episodes a run holds) is a pure function of the recipe, so
`--resume` can finish a crashed run: finished episodes are skipped, an interrupted one continues
after its stored steps are replayed (or restarts, if the env does not reproduce them).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from agentdistill.agents.policies import EpisodeContext, EpisodeOver, Policy, Turn
from agentdistill.envs.base import Env, Task
from agentdistill.errors import ModelError
from agentdistill.secrets import redact
from agentdistill.store.store import StepRecord, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpisodeSpec:
    plan_index: int
    role: str
    task: Task
    seed: int


def make_plan(roles: list[str], tasks: list[Task], seeds: list[int]) -> list[EpisodeSpec]:
    specs = [(role, task, seed) for role in roles for task in tasks for seed in seeds]
    return [EpisodeSpec(i, r, t, s) for i, (r, t, s) in enumerate(specs)]


class EnvPool:
    """Up to `size` env instances, created lazily in worker threads. An instance that failed in any way
    (start, reset, step, admissible actions, close) is retired and its slot starts a fresh one, so a dead
    env (a killed JVM, a crashed browser) costs only the episode that was using it."""

    def __init__(self, factory: Callable[[], Env], size: int, first: Env | None = None):
        self.factory = factory
        self._free: asyncio.Queue[Env | None] = asyncio.Queue()
        for i in range(size):
            self._free.put_nowait(first if i == 0 else None)
        self._all: list[Env] = [first] if first else []

    async def acquire(self) -> Env:
        env = await self._free.get()
        if env is None:
            lock, started, abandoned = threading.Lock(), [], []

            def start() -> Env | None:
                made = self.factory()
                with lock:  # a caller cancelled meanwhile (Ctrl-C) will not take it: it must not leak
                    if abandoned:
                        _close_quietly(made)
                        return None
                    started.append(made)
                return made

            try:
                env = await asyncio.to_thread(start)
            except BaseException:
                with lock:
                    abandoned.append(True)
                    self._all += started  # made just before the cancel: closed with the pool
                self._free.put_nowait(None)  # the slot stays usable: the next episode starts a new instance
                raise
            self._all.append(env)
        return env

    def release(self, env: Env, broken: bool = False) -> None:
        if broken:
            self._all.remove(env)
            _close_quietly(env)
            self._free.put_nowait(None)
        else:
            self._free.put_nowait(env)

    def close(self, keep: Callable[[list[Env]], None] | None = None) -> None:
        """Close every instance, or hand the idle ones (none broken, none mid-episode) to `keep`."""
        idle: list[Env] = []
        while keep is not None and not self._free.empty():
            env = self._free.get_nowait()
            if env is not None:
                idle.append(env)
        try:
            if idle:
                keep(idle)
        finally:
            _close_quietly(*[env for env in self._all if not any(env is kept for kept in idle)])
            self._all.clear()


def _close_quietly(*things) -> None:
    """Close each of `things` that is there, on its own: a dead env (or a cluster's actors after a failed
    start) may fail to close, and it is being discarded anyway."""
    for thing in things:
        if thing is None:
            continue
        try:
            thing.close()
        except Exception as e:
            log.debug("closing a discarded %s failed: %s", type(thing).__name__, e)


class Executor(ABC):
    """Where a plan's attempts are played. The Runner owns the plan, the attempts and their records; an
    executor supplies an env and plays one attempt on it (`Runner.play`). An attempt it loses (it raises)
    is recorded by the Runner as an error and retried like any other."""

    @abstractmethod
    async def play(self, runner: Runner, spec: EpisodeSpec, episode_id: int, attempt: int) -> str: ...

    def close(self) -> None:  # noqa: B027 - optional
        pass


class LocalExecutor(Executor):
    """Attempts played in this process, on env instances from an EnvPool."""

    def __init__(self, pool: EnvPool, keep: Callable[[list[Env]], None] | None = None):
        self.pool = pool
        self.keep = keep  # takes the pool's idle instances when the run ends (kept.py)

    async def play(self, runner: Runner, spec: EpisodeSpec, episode_id: int, attempt: int) -> str:
        env = await self.pool.acquire()  # a failed start is the attempt's error (the Runner records it)
        broken = True
        try:
            status, broken = await runner.play(spec, env, episode_id, attempt)
            return status
        finally:
            self.pool.release(env, broken=broken)

    def close(self) -> None:
        self.pool.close(self.keep)


class Runner:
    def __init__(self, store: Store, run_id: str | None, policies: dict[str, Policy], max_steps: dict[str, int],
                 max_attempts: int = 1):
        """`run_id` None: a runner that only plays attempts opened elsewhere (`play`), as an env actor's does."""
        self.store = store
        self.run_id = run_id
        self.policies = policies
        self.max_steps = max_steps  # per role
        self.max_attempts = max_attempts

    @staticmethod
    def _pending(prior) -> bool:
        """Does this plan entry still need work: never started, interrupted, or errored? Each call of `run`
        gives an entry up to `max_attempts` attempts, so a resumed run retries what ran out of attempts
        before (a browser that stalled under load, a node that went away); earlier attempts stay stored."""
        return prior is None or prior.status in ("running", "error")

    async def run(self, plan: list[EpisodeSpec], pool: EnvPool | Executor, concurrency: int,
                  progress: bool = True) -> None:
        """Play the plan's pending entries, `concurrency` at once, on `pool` (an EnvPool: in this process)
        or another executor (e.g. Ray actors across a cluster): the same plan, retries and resume either way."""
        executor = pool if isinstance(pool, Executor) else LocalExecutor(pool)
        # env calls and local-model calls run in worker threads: one per concurrent episode, or the
        # default pool (cores + 4) would quietly cap concurrency
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=concurrency + 4))
        existing = self.store.episodes_by_plan(self.run_id)
        todo = [s for s in plan if self._pending(existing.get(s.plan_index))]
        sem = asyncio.Semaphore(concurrency)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            disable=not progress,
        ) as bar:
            job = bar.add_task("episodes", total=len(plan), completed=len(plan) - len(todo))

            async def one(spec: EpisodeSpec) -> None:
                async with sem:
                    prior = existing.get(spec.plan_index)
                    attempt = prior.attempt if prior else 0
                    episode_id = prior.id if prior is not None and prior.status == "running" else None
                    if prior is not None and prior.status == "error":
                        attempt += 1  # a retry of an attempt that errored before (e.g. before a crash)
                    tries = 0
                    while True:
                        status = await self._attempt(spec, executor, episode_id, attempt)
                        tries += 1
                        if status != "error" or tries >= self.max_attempts:
                            break
                        attempt, episode_id = attempt + 1, None  # the errored attempt stays as it is
                    bar.advance(job)

            await asyncio.gather(*(one(s) for s in todo))

    def open_episode(self, spec: EpisodeSpec, attempt: int) -> int:
        """The episode row of a new attempt (status running), before anything is played."""
        policy, task = self.policies[spec.role], spec.task
        return self.store.start_episode(
            self.run_id,
            spec.plan_index,
            self.store.task_id(task.env, task.name, task.variation, task.split),
            attempt=attempt,
            role=spec.role,
            policy_id=policy.id,
            model=policy.model_id,
            sampling=policy.sampling,
            seed=spec.seed,
            skill_version_id=getattr(policy, "skill_version_id", None),
        )

    async def _attempt(self, spec: EpisodeSpec, executor: Executor, episode_id: int | None, attempt: int) -> str:
        """One attempt of a plan entry on the executor; returns its final status (done or error). An attempt
        the executor loses (its env's process or node died, so it could not record the end itself) is
        recorded here as an error; what it had stored stays."""
        t0 = time.perf_counter()
        if episode_id is None:
            episode_id = self.open_episode(spec, attempt)
        try:
            return await executor.play(self, spec, episode_id, attempt)
        except Exception as e:
            log.warning("episode %s (%s) attempt %d failed: %s", spec.plan_index, spec.task.key, attempt + 1,
                        redact(str(e))[:300])
            (ep,) = self.store.episodes(ids=[episode_id], attempts="all", with_calls=False)
            if ep.status != "running":  # it did record its end before the reply was lost
                return ep.status
            self.store.finish_episode(
                episode_id,
                status="error",
                success=False,
                error=redact(f"{type(e).__name__}: {e}")[:4000],
                wall_time=time.perf_counter() - t0,
            )
            return "error"

    async def play(self, spec: EpisodeSpec, env: Env, episode_id: int, attempt: int = 0) -> tuple[str, bool]:
        """Play one attempt of a plan entry on `env` (replaying its stored steps first, if any), committing
        each step before the next action; records its end. Returns (status, whether the env is broken)."""
        policy = self.policies[spec.role]
        t0 = time.perf_counter()
        task = spec.task
        last_info: dict[str, Any] = {}
        try:
            obs = await asyncio.to_thread(env.reset, task, spec.seed)
            self.store.task_id(task.env, task.name, task.variation, task.split, goal=obs.goal)
            history, current, done, last_info = await self._replay(env, task, spec.seed, episode_id, obs.text)
            state: dict[str, Any] = {}  # the policy's memory for this episode
            while not done and len(history) < self.max_steps[spec.role]:
                ctx = EpisodeContext(task, obs.goal, current, history, env, state)
                try:
                    decision = await policy.act(ctx)
                except EpisodeOver:
                    break
                result = await asyncio.to_thread(env.step, decision.action)
                step_id = self.store.add_step(
                    episode_id,
                    StepRecord(
                        idx=len(history),
                        observation=current,
                        action=decision.action,
                        reward=result.reward,
                        done=result.done,
                        next_observation=result.observation,
                        thought=decision.thought,
                        raw_output=decision.raw_output,
                        info={**result.info, **decision.info},
                        answered_by=decision.answered_by,
                        prompt_tokens=decision.prompt_tokens,
                        completion_tokens=decision.completion_tokens,
                        cost=decision.cost,
                        latency=decision.latency,
                        calls=decision.calls,
                    ),
                )
                if decision.label is not None:  # a crash between the two writes leaves this state unlabelled
                    self.store.add_label(step_id, decision.label, self.run_id)
                history.append(Turn(current, decision.action, decision.thought))
                current, done, last_info = result.observation, result.done, result.info
            self.store.finish_episode(
                episode_id,
                status="done",
                success=bool(last_info.get("won", False)),
                score=last_info.get("score"),
                wall_time=time.perf_counter() - t0,
            )
            return "done", False
        except Exception as e:  # recorded, and the run goes on
            # a model error leaves the env healthy; anything else may have come from the env (a dead JVM
            # fails in reset, step, admissible_actions or the expert): retire it rather than reuse it
            log.warning("episode %s (%s) attempt %d failed: %s", spec.plan_index, task.key, attempt + 1,
                        redact(str(e))[:300])
            self.store.finish_episode(
                episode_id,
                status="error",
                success=False,
                error=redact(f"{type(e).__name__}: {e}")[:4000],
                wall_time=time.perf_counter() - t0,
            )
            return "error", not isinstance(e, ModelError)

    async def _replay(self, env: Env, task: Task, seed: int, episode_id: int, first_obs: str):
        """Bring an interrupted episode's env back to its last stored step.

        Returns (history, current observation, done, last info). If the env does not reproduce the
        stored observations, the partial episode is discarded and starts over.
        """
        stored = self.store.steps(episode_id)
        history: list[Turn] = []
        current, done, info = first_obs, False, {}
        for st in stored:
            if st.observation != current:
                break
            result = await asyncio.to_thread(env.step, st.action)
            if result.observation != st.next_observation:
                break
            history.append(Turn(st.observation, st.action, st.thought))
            current, done, info = result.observation, result.done, result.info
        else:
            return history, current, done, info
        log.info("episode %s: env did not reproduce its stored steps; restarting it", episode_id)
        self.store.restart_episode(episode_id)
        obs = await asyncio.to_thread(env.reset, task, seed)
        return [], obs.text, False, {}
