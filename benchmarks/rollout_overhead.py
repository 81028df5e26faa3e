"""Framework rollout vs a raw ScienceWorld loop, same expert (gold) actions, same episodes.

Goal: framework / raw <= 1.10. "raw" is the loop a user writes with the scienceworld package's
public API; "raw-server" drives the same JVM calls our adapter makes (no per-step valid-action
list), so framework / raw-server is the framework's own overhead (store writes, asyncio, policy).
Run: python benchmarks/rollout_overhead.py [--episodes-per-task 4]
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

TASKS = ["lifespan-longest-lived", "power-component", "identify-life-stages-2", "find-living-thing"]


def raw_loop(tasks, public_api: bool) -> tuple[float, int]:
    from scienceworld import ScienceWorldEnv

    t0 = time.perf_counter()
    env = ScienceWorldEnv("", envStepLimit=10_000)
    steps = 0
    for name, var in tasks:
        env.load(name, var, "", generateGoldPath=True)
        gold = env.get_gold_action_sequence()
        if public_api:
            env.reset()
            for a in gold:
                _, _, done, _ = env.step(a)
                steps += 1
                if done:
                    break
        else:
            env.server.reset()
            env.server.step("look around")
            for a in gold:
                env.server.step(a)
                env.server.getScore()
                steps += 1
                if env.server.getCompleted():
                    break
    env.close()
    return time.perf_counter() - t0, steps


def framework(tasks_cfg, n) -> tuple[float, int]:
    from agentdistill.agents.rollout import run_recipe
    from agentdistill.config import parse_recipe
    from agentdistill.store.store import Store

    with tempfile.TemporaryDirectory() as d:
        store = Store.open(os.path.join(d, "b.db"))
        recipe = parse_recipe(
            {"env": {"tasks": tasks_cfg, "variations": n}, "teacher": {"policy": "expert"},
             "runner": {"concurrency": 1, "max_steps": 500}}
        )
        t0 = time.perf_counter()
        run_id = run_recipe(store, recipe, progress=False)
        elapsed = time.perf_counter() - t0
        eps = store.episodes(run_id=run_id)
        assert all(e.success for e in eps), "expert must win every episode"
        return elapsed, sum(e.n_steps for e in eps)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes-per-task", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from agentdistill.envs import make

    env = make("scienceworld")  # also warms the on-disk split cache, so neither side pays for it
    tasks = [(t.name, t.variation) for name in TASKS for t in env.tasks("test", [name])[: args.episodes_per_task]]
    env.close()

    # alternate the variants over rounds and keep each one's best time: this machine is noisy, and
    # the first JVM start of a process pays for cold caches
    best: dict[str, tuple[float, int]] = {}
    for _ in range(args.rounds):
        for name, fn in (
            ("framework", lambda: framework(TASKS, args.episodes_per_task)),
            ("raw", lambda: raw_loop(tasks, public_api=True)),
            ("raw-server", lambda: raw_loop(tasks, public_api=False)),
        ):
            t, n = fn()
            best[name] = min(best.get(name, (t, n)), (t, n))
    (fw, fw_steps), (raw, raw_steps), (srv, srv_steps) = best["framework"], best["raw"], best["raw-server"]
    print(f"best of {args.rounds} rounds each (times include the JVM start)")
    print(f"episodes: {len(tasks)}  steps: framework {fw_steps}, raw {raw_steps}, raw-server {srv_steps}")
    print(f"framework  {fw:7.2f} s  ({fw_steps / fw:6.1f} steps/s, every step committed to SQLite)")
    print(f"raw        {raw:7.2f} s  ({raw_steps / raw:6.1f} steps/s, scienceworld public API)")
    print(f"raw-server {srv:7.2f} s  ({srv_steps / srv:6.1f} steps/s, the JVM calls our adapter makes)")
    print(f"ratio framework/raw        = {fw / raw:.3f}   (goal <= 1.10)")
    print(f"ratio framework/raw-server = {fw / srv:.3f}   (framework overhead alone)")


if __name__ == "__main__":
    main()
