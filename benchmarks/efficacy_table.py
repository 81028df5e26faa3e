"""The full efficacy table: every distillation method against the base student and against the checkpoint
it continues, on held-out tasks of four real environments (TextWorld, MiniWoB++ in chromium, ScienceWorld,
ALFWorld), and the cascade's cost at matched success.

Each environment is one pipeline recipe in benchmarks/recipes/ (collect -> distilled arms, each kept on dev
-> eval on 30 held-out episodes per arm -> report), run through `agentdistill run`'s own pipeline, so every
number is in the store and re-running reuses finished stages. Prints, per environment, the efficacy table
(success with a bootstrap 95% interval, the paired difference to the base student with its interval, cost per
episode, training and wall time), the paired difference of each continued arm to its init, which arms did
not beat their init, which candidate each trainer kept on dev, and DAgger's labelling cost beside the teacher
data's; then the cascade (SFT student -> teacher) against the teacher alone.

ALFWorld's games are generated offline from the sample scene beside the clone (../shared/data/alfworld-sample,
or --alfworld-source) into data/alfworld-gen when missing: train, dev (valid_seen) and test (valid_unseen)
goals are disjoint.

Run: python benchmarks/efficacy_table.py [--env textworld --env miniwob --env scienceworld --env alfworld]
     [--db efficacy.db]   (hours on 2 CPU cores; one recipe: agentdistill run benchmarks/recipes/efficacy-<env>.toml)
"""

import argparse
import os
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from agentdistill.config import load_recipe  # noqa: E402
from agentdistill.pipeline import run_pipeline  # noqa: E402
from agentdistill.report import efficacy  # noqa: E402
from agentdistill.store.store import Store  # noqa: E402

RECIPES = Path(__file__).parent / "recipes"
ENVS = ("textworld", "miniwob", "scienceworld", "alfworld")
ALFWORLD_GAMES = {"train": 60, "valid_seen": 10, "valid_unseen": 30}  # games generated per split (test = unseen)


def alfworld_games(source: Path, out: Path = Path("data/alfworld-gen")) -> None:
    """Generate the ALFWorld recipe's games where a split has fewer than it needs (each won by the experts)."""
    from agentdistill.envs.alfworld import find_games
    from agentdistill.envs.alfworld_gen import generate, source_games

    for split, n in ALFWORLD_GAMES.items():
        have = sum(len(g) for g in find_games(out, split).values())
        if have < n:
            print(f"  generating {n - have} ALFWorld {split} games from {source}", flush=True)
            sources = [p for p in source_games(source) if out.resolve() not in p.resolve().parents]
            generate(sources, out, split, n - have, seed=have)


def print_table(report: dict) -> None:
    widths = [14, 5, 17, 18, 20, 6, 6, 10, 8, 8, 7]
    cols = ["arm", "eps", "success [95% CI]", "vs base [95% CI]", "verdict", "score", "steps", "$/episode",
            "teacher", "train s", "wall s"]
    print("  ".join(c.ljust(w) if i in (0, 4) else c.rjust(w) for i, (c, w) in enumerate(zip(cols, widths))))
    for r in efficacy.rows(report):
        arm, eps, succ, diff, verdict, score, steps, _tin, _tout, cost, teacher, *_efficiency, train, wall = r
        vals = [arm, eps, succ, diff, verdict or "", score, steps, cost, teacher, train, wall]
        print("  ".join(v.ljust(w) if i in (0, 4) else v.rjust(w) for i, (v, w) in enumerate(zip(vals, widths))))
    for line in efficacy.conclusions(report):
        print(f"  {line}")


def cascade_line(report: dict, cascade: str = "cascade-sft") -> str:
    arms = {a["arm"]: a for a in report["arms"]}
    if cascade not in arms or "teacher" not in arms:
        return f"  ({cascade} or teacher arm missing)"
    c, t = arms[cascade], arms["teacher"]
    ratio = t["cost_per_episode"] / c["cost_per_episode"] if c["cost_per_episode"] else float("inf")
    matched = c["success"][1] <= t["success"][0] <= c["success"][2]
    return (f"  {cascade} vs teacher alone: ${c['cost_per_episode']:.5f} vs ${t['cost_per_episode']:.5f} per episode = "
            f"{ratio:.2f}x cheaper (goal >= 3x), success {efficacy.pct(c['success'])} vs {efficacy.pct(t['success'])}: "
            f"{'matched' if matched else 'NOT matched'} (teacher inside the cascade's interval); the teacher answered "
            f"{c['teacher_step_share']:.0%} of the cascade's steps")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--env", action="append", choices=ENVS, help="environments to run (default: all three)")
    ap.add_argument("--db", default="efficacy.db", help="store (re-running reuses finished stages)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--alfworld-source", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" /
                    "alfworld-sample", help="ALFWorld games whose scene the recipe's games are generated from")
    args = ap.parse_args()
    store = Store.open(args.db)
    reports = {}
    for env in args.env or ENVS:
        if env == "alfworld":
            alfworld_games(args.alfworld_source)
        recipe = load_recipe(RECIPES / f"efficacy-{env}.toml")
        print(f"== {env}: {recipe.name}", flush=True)
        run_id = run_pipeline(store, recipe, progress=not args.no_progress, say=lambda s: print(s, flush=True))
        reports[env] = efficacy.load(store, run_id)
    for env, report in reports.items():
        r = report["env"]
        print(f"\n{env}: held-out {r['split']} tasks {', '.join(r['tasks'] or [])}, "
              f"{report['arms'][0]['episodes']} episodes per arm; pipeline run {report['pipeline_run']}")
        print_table(report)
        print(cascade_line(report))


if __name__ == "__main__":
    main()
