"""In-context distillation on held-out ScienceWorld variations: teacher alone vs student alone vs
student + ICD vs cascade. Success with a bootstrap 95% interval, cost per episode, cost ratio at
matched success, upfront demo cost and break-even.

Prices (stated assumptions, not measurements): the ScienceWorld expert stands in for a frontier API
teacher at $0.003 per action (a ~1,200-token ReAct prompt at $2/M plus ~40 output tokens at $8/M);
the SmolLM2 student is charged like a small hosted model, $0.05/M input and $0.10/M output tokens.
SmolLM2-135M is a very weak student: the figures show the pipeline and its accounting, not what a
capable student achieves.
Run: python benchmarks/icd_cascade.py [--variations 2] [--db icd-bench.db]
     python benchmarks/icd_cascade.py --student openai/qwen2.5-1.5b-instruct --student-api-base http://localhost:8000/v1
"""

import argparse
import os
import tempfile

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from agentdistill.agents.rollout import run_recipe  # noqa: E402
from agentdistill.config import parse_recipe  # noqa: E402
from agentdistill.distill.icd import DemoIndex  # noqa: E402
from agentdistill.report.costs import break_even, cost_report  # noqa: E402
from agentdistill.store.store import Store  # noqa: E402

TASKS = ["lifespan-longest-lived", "power-component", "identify-life-stages-2"]
TEACHER = {"policy": "expert", "price": {"per_action": 0.003}}
STUDENT = {"model": "local/smollm2-135m", "max_tokens": 32, "history": 3,
           "price": {"input_per_mtok": 0.05, "output_per_mtok": 0.10}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variations", type=int, default=2, help="held-out test variations per task")
    ap.add_argument("--demo-variations", type=int, default=3, help="train variations per task for demos")
    ap.add_argument("--max-steps", type=int, default=20, help="step limit of every policy's episodes (gold paths here are 4-12)")
    ap.add_argument("--thresholds", default="0.5,0.9", help="cascade agreement thresholds to compare")
    ap.add_argument("--student", default=STUDENT["model"], help="student model id")
    ap.add_argument("--student-api-base", default=None, help="OpenAI-compatible server of the student")
    ap.add_argument("--db", default=None)
    args = ap.parse_args()
    STUDENT["model"] = args.student
    if args.student_api_base:
        STUDENT["api_base"] = args.student_api_base
    work = tempfile.mkdtemp(prefix="icd-bench-")
    store = Store.open(args.db or os.path.join(work, "bench.db"))
    index_dir = os.path.join(work, "index")
    env = {"split": "test", "tasks": TASKS, "variations": args.variations}
    icd = {"index": index_dir, "k": 2, "unit": "window", "window": 2}

    demos_run = run_recipe(store, parse_recipe({
        "name": "demos", "env": {"split": "train", "tasks": TASKS, "variations": args.demo_variations},
        "teacher": TEACHER, "runner": {"max_steps": 60}}), progress=False)
    DemoIndex.build(store, index_dir, env="scienceworld", runs=[demos_run], split="train")
    icd["runs"] = [demos_run]

    def run(name, role, spec, max_steps):
        return run_recipe(store, parse_recipe({"name": name, "env": env, role: spec,
                                               "runner": {"concurrency": 2, "max_steps": max_steps}}), progress=True)

    runs = {
        "teacher alone": (run("teacher", "teacher", TEACHER, args.max_steps), "teacher"),
        "student alone": (run("student", "student", STUDENT, args.max_steps), "student"),
        "student + ICD": (run("student+icd", "student", {**STUDENT, "icd": icd}, args.max_steps), "student"),
    }
    for t in [float(x) for x in args.thresholds.split(",")]:
        runs[f"cascade t={t:g}"] = (run(f"cascade-{t:g}", "student", {
            **STUDENT, "policy": "cascade", "n": 3, "temperature": 0.7, "threshold": t, "icd": icd,
            "fallback": TEACHER}, args.max_steps), "student")
    rows = cost_report(store, runs)
    teacher = rows[0]
    upfront = DemoIndex.load(index_dir).upfront_cost
    print(f"\nheld-out test variations: {len(TASKS)} tasks x {args.variations}; demos from "
          f"{len(TASKS)} x {args.demo_variations} train variations; store {store.engine.url}")
    print(f"{'policy':15} {'eps':>4} {'success [95% CI]':>20} {'$/episode':>10} {'teacher steps':>14} {'cost vs teacher':>16}")
    for r in rows:
        ratio = r.ratio_to(teacher)
        print(f"{r.label:15} {r.episodes:4d} {f'{r.success:.0%} [{r.success_low:.0%}, {r.success_high:.0%}]':>20} "
              f"{r.cost_per_episode:10.5f} {r.teacher_step_share:14.0%} {'-' if ratio is None else f'{ratio:.2f}x cheaper':>16}")
    print(f"\ndemos cost ${upfront:.4f} upfront (teacher episodes behind the index)")
    for cascade in rows[3:]:
        matched = cascade.success_low <= teacher.success <= cascade.success_high
        ratio = cascade.ratio_to(teacher)
        n = break_even(upfront, teacher, cascade)
        print(f"{cascade.label}: cost ratio {ratio:.2f}x (goal >= 3x) at {'matched' if matched else 'NOT matched'} "
              f"success ({cascade.success:.0%} [{cascade.success_low:.0%}, {cascade.success_high:.0%}] vs teacher "
              f"{teacher.success:.0%}); " + (f"pays back the demos after {n:.1f} episodes" if n else "never pays them back"))


if __name__ == "__main__":
    main()
