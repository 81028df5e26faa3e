"""16 concurrent episodes vs 1: the LLM policy through litellm against an OpenAI-compatible server
with a fixed per-call latency (the stand-in server in agentdistill.testing).

Goal: time(concurrency 1) / time(concurrency 16) >= 12.

`--env corridor` (default) is a pure-Python env defined here whose steps cost microseconds, so the
figure is the runner's own concurrency against model latency. `--env scienceworld` runs the same on
real ScienceWorld JVMs (started and warmed before timing); on a 2-core machine 16 JVMs are CPU-bound
(each task load costs ~0.3-0.6 s of CPU per JVM), which caps that figure well below the runner's.
Run: python benchmarks/concurrency.py [--latency 1.0] [--steps 5] [--env corridor|scienceworld]
"""

import argparse
import asyncio
import os
import tempfile
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from agentdistill.agents.policies import LLMPolicy  # noqa: E402
from agentdistill.agents.runner import EnvPool, Runner, make_plan  # noqa: E402
from agentdistill.envs import Env, Observation, StepResult, Task, make  # noqa: E402
from agentdistill.models.litellm_backend import LiteLLMModel  # noqa: E402
from agentdistill.store.store import Store  # noqa: E402
from agentdistill.testing import OpenAIStub  # noqa: E402

EPISODES = 16


class CorridorEnv(Env):
    """Walk down a corridor: every action moves one room on. Costs nothing, so only the model's
    latency and the runner remain."""

    name = "corridor"
    description = "a corridor of rooms"

    @classmethod
    def requirements(cls):
        return []

    def tasks(self, split, names=None):
        return [Task(self.name, "corridor", v, split) for v in range(EPISODES)]

    def reset(self, task, seed=0):
        self.room = 0
        return Observation("You are in room 0.", "Reach the end of the corridor.")

    def step(self, action):
        self.room += 1
        return StepResult(f"You are in room {self.room}.", 0.0, False, {"score": self.room, "won": False})


def timed(store, envs, plan, policy, concurrency, steps) -> float:
    run_id = store.create_run(f"c{concurrency}", {})
    pool = EnvPool(lambda: None, 0)
    for env in envs[:concurrency]:
        pool._free.put_nowait(env)  # pre-started instances, as a run's pool holds them
    runner = Runner(store, run_id, {"student": policy}, {"student": steps})
    t0 = time.perf_counter()
    asyncio.run(runner.run(plan, pool, concurrency, progress=False))
    elapsed = time.perf_counter() - t0
    eps = store.episodes(run_id=run_id)
    assert len(eps) == EPISODES and all(e.status == "done" and e.n_steps == steps for e in eps), [e.error for e in eps]
    return elapsed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency", type=float, default=1.0, help="seconds per model call")
    ap.add_argument("--steps", type=int, default=5, help="steps per episode")
    ap.add_argument("--env", choices=["corridor", "scienceworld"], default="corridor")
    args = ap.parse_args()
    if args.env == "scienceworld":
        print(f"starting and warming {EPISODES} ScienceWorld JVMs (not timed)")
        envs = [make("scienceworld") for _ in range(EPISODES)]
        tasks = envs[0].tasks("test", ["find-living-thing"])[:EPISODES]
        for env, task in zip(envs, envs[0].tasks("dev", ["find-living-thing"])):
            env.reset(task)
    else:
        envs = [CorridorEnv() for _ in range(EPISODES)]
        tasks = envs[0].tasks("test")
    plan = make_plan(["student"], tasks, [0])
    try:
        with OpenAIStub(reply="Thought: onwards.\nAction: look around", latency=args.latency) as server, \
                tempfile.TemporaryDirectory() as d:
            store = Store.open(os.path.join(d, "c.db"))
            model = LiteLLMModel("openai/stub", api_base=server.url)
            asyncio.run(model.acomplete([{"role": "user", "content": "warm-up"}]))  # litellm's first call imports a lot
            policy = LLMPolicy(model, max_tokens=16, match_admissible=False)
            t16 = timed(store, envs, plan, policy, EPISODES, args.steps)
            t1 = timed(store, envs, plan, policy, 1, args.steps)
            calls = len(server.seen) - 1
    finally:
        for env in envs:
            env.close()
    print(f"env {args.env}: {EPISODES} episodes x {args.steps} steps, {args.latency:.2f} s per model call, {calls} calls")
    print(f"concurrency 1   {t1:7.2f} s")
    print(f"concurrency 16  {t16:7.2f} s")
    print(f"speed-up = {t1 / t16:.2f}x   (goal >= 12x; ideal {EPISODES}x)")


if __name__ == "__main__":
    main()
