"""Does training help? SmolLM2-135M on one ScienceWorld task family: held-out success before and after
SFT, on-policy distillation (OPD) and OPD + TCOD, each with a bootstrap 95% interval.

Setup: expert (gold-path) episodes on train variations; SFT trains a LoRA (r=16) on them; OPD and
OPD + TCOD continue from the SFT checkpoint (as OPD is used in practice: the base model's samples
are not yet agent actions a teacher could usefully score). OPD's teacher is the student's own
current weights with privileged context (the stored expert solution of the variation being
played: on-policy self-distillation), reverse KL on the student's sampled agent tokens; TCOD adds
the front-to-back curriculum. Evaluation: greedy, on test variations never trained on, always the
full step limit; each evaluation is recorded in the store. Columns: success, ScienceWorld's score
(-100 when the task is failed, e.g. by focusing on the wrong object), and the share of the
student's actions that were valid (matched an admissible action) - the first thing a weak student
learns.
SmolLM2-135M on a CPU is a proof that the pipeline runs end to end, not a quality claim.

Run: python benchmarks/train_efficacy.py [--task lifespan-longest-lived] [--train-variations 10]
     [--test-variations 10] [--iterations 8] [--device auto] [--db efficacy.db]
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from agentdistill.agents.rollout import run_recipe  # noqa: E402
from agentdistill.config import parse_recipe  # noqa: E402
from agentdistill.report.stats import bootstrap_ci  # noqa: E402
from agentdistill.store.models import Evaluation  # noqa: E402
from agentdistill.store.store import Store  # noqa: E402
from agentdistill.train.curriculum import Curriculum  # noqa: E402
from agentdistill.train.data import EpisodeFilter, build_sft_dataset  # noqa: E402
from agentdistill.train.model import Hardware, LoraSpec, base_checkpoint  # noqa: E402
from agentdistill.train.opd import OPDSpec, train_opd  # noqa: E402
from agentdistill.train.sft import SFTSpec, train_sft  # noqa: E402

BASE = "local/smollm2-135m"


def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="lifespan-longest-lived")
    ap.add_argument("--train-variations", type=int, default=10)
    ap.add_argument("--test-variations", type=int, default=10)
    ap.add_argument("--max-steps", type=int, default=8, help="student step limit, training and evaluation")
    ap.add_argument("--history", type=int, default=2)
    ap.add_argument("--sft-epochs", type=float, default=2.0)
    ap.add_argument("--iterations", type=int, default=8, help="OPD iterations (2 episodes each)")
    ap.add_argument("--temperature", type=float, default=1.0, help="OPD rollout sampling temperature")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--db", default=None)
    args = ap.parse_args()
    hw = Hardware.pick(args.device)
    work = tempfile.mkdtemp(prefix="train-bench-")
    store = Store.open(args.db or os.path.join(work, "bench.db"))
    lora = LoraSpec(r=16, alpha=32, dropout=0.0)

    run_recipe(store, parse_recipe({"name": "expert-train", "env": {"split": "train", "tasks": [args.task],
                                    "variations": args.train_variations}, "teacher": {"policy": "expert"},
                                    "runner": {"max_steps": 60}}), progress=False)

    def evaluate(label: str, model: str, checkpoint_id: int | None, train_s: float | None, tokens_s: float | None):
        run_id = run_recipe(store, parse_recipe({
            "name": f"eval-{label}", "env": {"split": "test", "tasks": [args.task], "variations": args.test_variations},
            "student": {"model": model, "max_tokens": 32, "history": args.history},
            "runner": {"concurrency": 1, "max_steps": args.max_steps}}), progress=False)
        eps = store.episodes(run_id=run_id, with_steps=True)
        success = bootstrap_ci([float(bool(e.success)) for e in eps])
        score = bootstrap_ci([e.score or 0.0 for e in eps])
        valid = bootstrap_ci([float(bool(st.info.get("matched_admissible"))) for e in eps for st in e.steps])
        row = {"label": label, "episodes": len(eps), "success": success, "score": score, "valid": valid,
               "train_s": train_s, "tokens_per_s": tokens_s}
        with store.session() as s, s.begin():
            s.add(Evaluation(name=f"efficacy:{args.task}:{label}", run_ids=[run_id], checkpoint_id=checkpoint_id,
                             metrics={"success": success, "score": score, "valid_actions": valid,
                                      "episodes": len(eps)}))
        print(f"  {label}: success {success[0]:.0%} [{success[1]:.0%}, {success[2]:.0%}], "
              f"score {score[0]:.1f} [{score[1]:.1f}, {score[2]:.1f}], valid actions {valid[0]:.0%}", flush=True)
        return row

    rows = [evaluate("base", BASE, None, None, None)]

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_checkpoint(BASE))
    dataset_id, ds = build_sft_dataset(store, tok, os.path.join(work, "sft-data"),
                                       EpisodeFilter(role="teacher", tasks=[args.task], split="train"),
                                       window=args.history)
    t0 = time.perf_counter()
    sft = train_sft(store, ds, os.path.join(work, "sft"), SFTSpec(lora=lora, epochs=args.sft_epochs, batch_size=2,
                                                                   learning_rate=2e-4), hw, dataset_id)
    rows.append(evaluate("SFT", f"local/{sft.path}", sft.checkpoint_id, time.perf_counter() - t0,
                         sft.metrics["tokens_per_s"]))

    for label, curriculum in (("SFT+OPD", Curriculum()), ("SFT+OPD+TCOD", Curriculum("f2b", k_start=1, eta=2))):
        spec = OPDSpec(student=f"local/{sft.path}", context="demo", tasks=[args.task],
                       variations=args.train_variations, iterations=args.iterations, episodes_per_iteration=2,
                       max_steps=args.max_steps, history=args.history, max_tokens=32, learning_rate=1e-4,
                       temperature=args.temperature, curriculum=curriculum)
        t0 = time.perf_counter()
        res = train_opd(store, spec, os.path.join(work, label.replace(" ", "_").replace("+", "-")), hw)
        rates = [it["tokens_per_s"] for it in res.iterations if it.get("tokens_per_s")]
        print(f"  {label} training: " + "; ".join(
            f"it{it['iteration']} k={it['k'] or 'full'} score {it['score']:.0f} div {fmt(it['divergence'], '.3f')}"
            for it in res.iterations))
        rows.append(evaluate(label, f"local/{res.path}", res.checkpoint_id, time.perf_counter() - t0,
                             sum(rates) / len(rates) if rates else None))

    print(f"\n{args.task}: trained on {args.train_variations} train variations (expert), evaluated greedily on "
          f"{args.test_variations} held-out test variations, step limit {args.max_steps}; device {hw.device}; "
          f"store {store.engine.url}")
    print(f"{'student':14} {'eps':>4} {'success [95% CI]':>18} {'score [95% CI]':>22} {'valid [95% CI]':>17} "
          f"{'train s':>8} {'tok/s':>6}")
    for r in rows:
        s, c, v = r["success"], r["score"], r["valid"]
        print(f"{r['label']:14} {r['episodes']:4d} {f'{s[0]:.0%} [{s[1]:.0%}, {s[2]:.0%}]':>18} "
              f"{f'{c[0]:.1f} [{c[1]:.1f}, {c[2]:.1f}]':>22} {f'{v[0]:.0%} [{v[1]:.0%}, {v[2]:.0%}]':>17} "
              f"{fmt(r['train_s'], '.0f'):>8} {fmt(r['tokens_per_s'], '.0f'):>6}")


if __name__ == "__main__":
    main()
