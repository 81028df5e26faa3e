"""The ray executor vs the local executor on one machine, for the same plan, in one run.

Both play the same recipe (the environment's expert teacher: no model, so the figure is the executor's
own overhead: actor processes, their imports and env starts, scheduling, the reply per episode) into the
same store, `--repeat` times in turn: local and ray with every env instance started for the run (the first
run of a process: the goal's comparison), then each again on the instances the previous run kept
(`runner.keep_envs_s`: a later run of the same process, such as a pipeline's next collect run or eval arm);
each wall time is the whole `run_recipe` call. The Ray cluster is a local one started here once, in this
process (`ray.init`, a private temp dir), and its start is printed apart: on a real cluster it is already up.
Each plan size in `--variations` gets its own ratios: the executor's cost is mostly once per run (actor
processes, their imports and envs start while this process lists the tasks), so a short plan shows it and a
longer one shows what remains per episode. Goal: ray / local <= 1.15.

Run: python benchmarks/ray_vs_local.py [--env scienceworld] [--variations 4,12] [--concurrency 2] [--repeat 3]
     [--db postgresql://...]   (default: a SQLite file in a temp dir, allowed with a cluster on this machine)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

TASKS = {"scienceworld": ["lifespan-longest-lived", "power-component", "identify-life-stages-2"],
         "textworld": ["easy", "medium"]}


def positive_counts(text: str) -> list[int]:
    """An argparse type: positive whole numbers, comma-separated (argparse's one-line error otherwise)."""
    try:
        counts = [int(v) for v in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive whole numbers, comma-separated (e.g. 4,12)")
    return counts


def positive_count(text: str) -> int:
    """An argparse type: one positive whole number."""
    try:
        (count,) = positive_counts(text)
    except (argparse.ArgumentTypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r}: give one positive whole number (e.g. 3)") from None
    return count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--env", default="scienceworld", choices=sorted(TASKS))
    ap.add_argument("--variations", default=[4, 12], type=positive_counts,
                    help="variations per task, one plan per value (comma-separated)")
    ap.add_argument("--concurrency", type=positive_count, default=2)
    ap.add_argument("--repeat", type=positive_count, default=3)
    ap.add_argument("--db", default=None)
    args = ap.parse_args()

    import ray

    from agentdistill.agents.ray_executor import KEPT_ACTORS
    from agentdistill.agents.rollout import KEPT_ENVS, run_recipe
    from agentdistill.config import parse_recipe
    from agentdistill.store.store import Store

    tmp = tempfile.mkdtemp(prefix="ad-ray-bench-")
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=args.concurrency, object_store_memory=100_000_000, include_dashboard=False,
             _temp_dir=os.path.join(tmp, "ray"), logging_level="WARNING", log_to_driver=False)
    cluster_start = time.perf_counter() - t0
    store = Store.open(args.db or os.path.join(tmp, "bench.db"))

    def recipe(executor: str, variations: int):
        return parse_recipe({"name": f"bench-{executor}",
                             "env": {"name": args.env, "split": "train", "tasks": TASKS[args.env],
                                     "variations": variations},
                             "teacher": {"policy": "expert"},
                             "runner": {"concurrency": args.concurrency, "max_steps": 40, "executor": executor}})

    print(f"{os.cpu_count()} CPU cores, shared with whatever else runs here; store {store.engine.url.get_backend_name()}; "
          f"local Ray cluster start (once, not counted): {cluster_start:.1f} s")
    arms = {"local": "local", "local, kept envs": "local", "ray": "ray", "ray, kept actors": "ray"}
    for variations in args.variations:
        times: dict[str, list[float]] = {arm: [] for arm in arms}
        steps: dict[str, int] = {}
        for _ in range(args.repeat):
            for arm, executor in arms.items():
                if "kept" not in arm:  # not timed: this run starts its own instances
                    KEPT_ENVS.stop_all()
                    KEPT_ACTORS.stop_all()
                t0 = time.perf_counter()
                run_id = run_recipe(store, recipe(executor, variations), progress=False)
                times[arm].append(time.perf_counter() - t0)
                eps = store.episodes(run_id=run_id, with_calls=False)
                assert all(e.status == "done" and e.success for e in eps), "an episode failed"
                steps[arm] = sum(e.n_steps for e in eps)
        KEPT_ENVS.stop_all()
        KEPT_ACTORS.stop_all()
        n = len(store.episodes(run_id=run_id, with_calls=False))
        print(f"plan: {n} expert episodes on {args.env} ({steps['ray']} steps), concurrency {args.concurrency}")
        for arm in arms:
            print(f"  {arm:>16}: " + ", ".join(f"{t:.1f} s" for t in times[arm])
                  + f"   median {statistics.median(times[arm]):.1f} s")
        median = {arm: statistics.median(t) for arm, t in times.items()}
        for ray_arm, local_arm, note in (("ray", "local", "goal <= 1.15"), ("ray, kept actors", "local, kept envs", "")):
            print(f"  {ray_arm} / {local_arm} (median wall time) = {median[ray_arm] / median[local_arm]:.2f}"
                  + (f"  ({note})" if note else "") + f"; {median[ray_arm] - median[local_arm]:+.1f} s")
        print(f"  kept / started for the run: local {median['local, kept envs'] / median['local']:.2f}, "
              f"ray {median['ray, kept actors'] / median['ray']:.2f}")
    ray.shutdown()
    store.close()
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
