"""The efficacy table of a pipeline run: did distillation make the student better on held-out tasks,
by how much, and at what cost.

Per arm: episodes, success with a bootstrap 95% interval, mean score and steps, tokens, cost per
episode, wall time, the share of steps the teacher answered (cascades), the efficiency metrics of
report.efficiency (repeated actions, step overhead, prompt cache), and the paired difference in
success to the base student with its own bootstrap interval: every arm plays the same held-out
(task, variation, seed) triples, so the difference is taken per triple and the triples resampled.
An arm "beats base" only when that interval lies above 0. The cost of getting there sits beside it:
the teacher episodes the distillers learned from and the training time of the stages behind the arm.
The table lands in the `evaluations` table (per-episode outcomes included) and is what `agentdistill
report efficacy RUN` reprints, as text, JSON or HTML.
"""

from __future__ import annotations

import math
from typing import Any

from agentdistill.errors import AgentDistillError
from agentdistill.report.efficiency import fmt_ratio, pooled, run_efficiency
from agentdistill.report.stats import bootstrap_ci
from agentdistill.store.models import Checkpoint, Evaluation
from agentdistill.store.store import Store

SCHEMA = "agentdistill.efficacy/1"


def _latest_stages(store: Store, run_id: str) -> dict[str, Any]:
    return {st.name: st for st in store.stages(run_id) if st.status == "done"}


def _verdict(diff: list[float] | None) -> str:
    if diff is None:
        return "-"
    if diff[1] > 0:
        return "better"
    if diff[2] < 0:
        return "worse"
    return "no clear difference"


def _training_chain(recipe: dict[str, Any], name: str) -> list[str]:
    """The distill stages behind an arm's model, e.g. sft-opd -> [sft, sft-opd]."""
    by_name = {d["name"]: d for d in recipe.get("distill", [])}
    chain = []
    while name in by_name:
        chain.insert(0, name)
        name = by_name[name].get("init", "base")
    return chain


def _init_of(recipe: dict[str, Any], arm: str) -> str | None:
    """The trained arm an arm's training started from (sft-opd -> sft); None from the base student."""
    stage = next((d for d in recipe.get("distill", []) if d["name"] == arm), None)
    init = (stage or {}).get("init")
    return init if init and init != "base" else None


def arm_uses(recipe: dict[str, Any], arm: str) -> list[str]:
    """Distill stages an arm's result depends on."""
    by_name = {d["name"]: d for d in recipe.get("distill", [])}
    if arm in by_name:
        return _training_chain(recipe, arm) if "init" in by_name[arm] else [arm]
    custom = next((a for a in (recipe.get("eval") or {}).get("arm", []) if a["name"] == arm), None)
    if custom is None:
        return []
    uses = _training_chain(recipe, custom.get("model", "base")) + custom.get("skills", [])
    return uses + ([custom["icd"]] if custom.get("icd") else [])


def build(store: Store, run_id: str, save: bool = True) -> dict[str, Any]:
    """Compute the efficacy table of a pipeline run from its eval stages (and store it)."""
    run = store.get_run(run_id)
    if run.kind != "pipeline":
        raise AgentDistillError(f"run {run.id} is a {run.kind} run, not a pipeline: `report efficacy` reads the "
                                "eval stages of a pipeline recipe")
    recipe = run.recipe
    stages = _latest_stages(store, run.id)
    arm_names = [n.removeprefix("eval.") for n in stages if n.startswith("eval.")]
    if not arm_names:
        raise AgentDistillError(f"pipeline run {run.id} has no finished eval stage yet: run its recipe "
                                f"(or `agentdistill run --resume {run.id}`)")
    base = ((recipe.get("report") or {}).get("base")) or "base"
    outcomes = {a: _outcomes(store, stages[f"eval.{a}"].outputs["run_id"]) for a in arm_names}
    base_outcomes = outcomes.get(base)
    collect = stages.get("collect")
    collect_out = collect.outputs if collect else {}
    arms = []
    for a in arm_names:
        out = stages[f"eval.{a}"].outputs
        eps = outcomes[a]
        row = _arm_row(store, a, out["run_id"], eps)
        if base_outcomes is not None and a != base:
            pairs = [(eps[k]["success"], base_outcomes[k]["success"]) for k in eps if k in base_outcomes]
            if pairs:
                row["diff_vs_base"] = list(bootstrap_ci([float(x) - float(y) for x, y in pairs]))
                row["pairs"] = len(pairs)
        row["verdict"] = _verdict(row.get("diff_vs_base"))
        uses = arm_uses(recipe, a)
        row["uses"] = uses
        row["train_s"] = sum(stages[f"distill.{u}"].wall_time or stages[f"distill.{u}"].outputs.get("wall_s", 0.0)
                             for u in uses if f"distill.{u}" in stages)
        row["teacher_data_cost"] = collect_out.get("cost", 0.0) if uses else 0.0
        # DAgger's labels: what the teacher charged to label the student's states, beside the teacher data's cost
        row["teacher_label_cost"] = sum(stages[f"distill.{u}"].outputs.get("label_cost") or 0.0
                                        for u in uses if f"distill.{u}" in stages)
        trained = stages.get(f"distill.{a}")
        if trained is not None and trained.outputs.get("kept"):  # the candidate kept on dev, and its dev score
            row["kept"] = {"candidate": trained.outputs["kept"], "dev_success": trained.outputs.get("dev_success")}
        init = _init_of(recipe, a)
        if init in outcomes:  # a method that continues a checkpoint must beat that checkpoint, not only base
            pairs = [(eps[k]["success"], outcomes[init][k]["success"]) for k in eps if k in outcomes[init]]
            if pairs:
                row["diff_vs_init"] = {"init": init, "ci": list(bootstrap_ci([float(x) - float(y) for x, y in pairs]))}
        arms.append(row)
    report = {
        "schema": SCHEMA, "pipeline_run": run.id, "recipe": recipe.get("name"), "base": base,
        "env": recipe.get("env"), "collect": {k: collect_out.get(k) for k in ("episodes", "successes", "cost", "wall_s",
                                                                               "reused_episodes")},
        "arms": arms, "curves": _curves(store, stages),
        "stages": [{"name": st.name, "wall_s": st.wall_time, "reused": st.reused_from is not None}
                   for st in stages.values()],
    }
    if save:
        with store.session() as s, s.begin():
            row = Evaluation(name=f"efficacy:{recipe.get('name')}", run_ids=[a["run_id"] for a in arms],
                             metrics=report)
            s.add(row)
            s.flush()
            report["evaluation_id"] = row.id
    return report


def load(store: Store, run_id: str) -> dict[str, Any]:
    """The efficacy table of a pipeline run: the one its report stage stored (a reused report stage points
    at the identical table an earlier run computed), else computed now from its eval stages."""
    run = store.get_run(run_id)
    report_stage = _latest_stages(store, run.id).get("report")
    evaluation_id = report_stage.outputs.get("evaluation_id") if report_stage else None
    if evaluation_id is not None:
        with store.session() as s:
            row = s.get(Evaluation, evaluation_id)
            if row is not None:
                return {**row.metrics, "evaluation_id": row.id}
    return build(store, run.id)


def _outcomes(store: Store, run_id: str) -> dict[tuple, dict[str, Any]]:
    out = {}
    for e in store.episodes(run_id=run_id, with_steps=True, with_calls=False):
        deferred = sum(bool((s.info or {}).get("deferred")) for s in e.steps)
        teacher_steps = len(e.steps) if e.role == "teacher" else deferred
        out[(e.task.name, e.task.variation, e.seed)] = {
            "task": e.task.name, "variation": e.task.variation, "seed": e.seed, "status": e.status,
            "success": bool(e.success), "score": e.score, "steps": e.n_steps, "prompt_tokens": e.prompt_tokens,
            "completion_tokens": e.completion_tokens, "cost": e.cost, "wall_s": e.wall_time,
            "teacher_steps": teacher_steps}
    return out


def _arm_row(store: Store, arm: str, run_id: str, eps: dict[tuple, dict[str, Any]]) -> dict[str, Any]:
    run = store.get_run(run_id)
    values = list(eps.values())
    n = len(values)
    scores = [v["score"] for v in values if v["score"] is not None]
    steps = sum(v["steps"] for v in values)
    wall = (run.finished_at - run.created_at).total_seconds() if run.finished_at else sum(v["wall_s"] for v in values)
    first = store.episodes(run_id=run_id)[:1]
    return {
        "arm": arm, "run_id": run_id, "policy": first[0].policy_id if first else "", "episodes": n,
        "errors": sum(v["status"] == "error" for v in values),
        "success": list(bootstrap_ci([float(v["success"]) for v in values])),
        "score": sum(scores) / len(scores) if scores else None,
        "steps": steps / n if n else 0.0,
        "prompt_tokens": sum(v["prompt_tokens"] for v in values),
        "completion_tokens": sum(v["completion_tokens"] for v in values),
        "cost": sum(v["cost"] for v in values),
        "cost_per_episode": sum(v["cost"] for v in values) / n if n else 0.0,
        "teacher_step_share": sum(v["teacher_steps"] for v in values) / steps if steps else 0.0,
        "efficiency": pooled(run_efficiency(store, run_id).values()).as_dict(),
        "wall_s": wall,
        "outcomes": values,
    }


def _curves(store: Store, stages: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Training curves of the pipeline's checkpoints: SFT / SODA loss per optimizer step, OPD divergence
    and rollout success per iteration."""
    curves = {}
    with store.session() as s:
        for name, st in stages.items():
            ckpt_id = st.outputs.get("checkpoint_id") if name.startswith("distill.") else None
            ckpt = s.get(Checkpoint, ckpt_id) if ckpt_id else None
            if ckpt is None:
                continue
            m = ckpt.metrics or {}
            if m.get("loss_curve"):
                curves[name.removeprefix("distill.")] = {"kind": "loss", "x": [p[0] for p in m["loss_curve"]],
                                                         "y": [p[1] for p in m["loss_curve"]], "method": ckpt.method}
            elif m.get("iterations"):
                its = [it for it in m["iterations"] if it.get("divergence") is not None]
                curves[name.removeprefix("distill.")] = {
                    "kind": "divergence", "x": [it["iteration"] for it in its], "y": [it["divergence"] for it in its],
                    "success": [it.get("success") for it in its], "method": ckpt.method}
    return curves


# ---- text ------------------------------------------------------------------------------------------
def pct(ci: list[float] | None, signed: bool = False) -> str:
    if not ci or any(isinstance(x, float) and math.isnan(x) for x in ci):
        return "-"
    fmt = "{:+.0f}" if signed else "{:.0f}"
    return f"{fmt.format(100 * ci[0])}% [{fmt.format(100 * ci[1])}, {fmt.format(100 * ci[2])}]"


COLUMNS = ("arm", "eps", "success [95% CI]", "vs base [95% CI]", "verdict", "score", "steps", "tok in", "tok out",
           "$/episode", "teacher steps", "repeat", "overhead", "cache", "train s", "wall s")


def _efficiency_cells(arm: dict[str, Any]) -> tuple[str, str, str]:
    """The PANDO columns (report.efficiency); "-" for a table stored before they existed."""
    eff = arm.get("efficiency")
    if eff is None:
        return "-", "-", "-"
    return (fmt_ratio(eff.get("action_repetition_rate"), percent=True), fmt_ratio(eff.get("step_overhead_ratio")),
            fmt_ratio(eff.get("prompt_cache_utilization"), percent=True))


def rows(report: dict[str, Any]) -> list[tuple[str, ...]]:
    out = []
    for a in report["arms"]:
        out.append((
            a["arm"], str(a["episodes"]) + (f" ({a['errors']} err)" if a["errors"] else ""), pct(a["success"]),
            pct(a.get("diff_vs_base"), signed=True) if a["arm"] != report["base"] else "(base)",
            a["verdict"] if a["arm"] != report["base"] else "",
            "-" if a["score"] is None else f"{a['score']:.1f}", f"{a['steps']:.1f}", str(a["prompt_tokens"]),
            str(a["completion_tokens"]), f"{a['cost_per_episode']:.5f}", f"{a['teacher_step_share']:.0%}",
            *_efficiency_cells(a), f"{a['train_s']:.0f}" if a["uses"] else "-", f"{a['wall_s']:.0f}"))
    return out


def conclusions(report: dict[str, Any]) -> list[str]:
    """Plain sentences: which arms beat the base student on held-out tasks and which did not."""
    base = report["base"]
    others = [a for a in report["arms"] if a["arm"] not in (base, "teacher") and a.get("diff_vs_base")]
    better = [a["arm"] for a in others if a["verdict"] == "better"]
    worse = [a["arm"] for a in others if a["verdict"] == "worse"]
    unclear = [a["arm"] for a in others if a["verdict"] == "no clear difference"]
    lines = [f"beat {base} (95% interval of the paired difference above 0): {', '.join(better) or 'none'}"]
    if unclear:
        lines.append(f"did not beat {base} (interval includes 0): {', '.join(unclear)}")
    if worse:
        lines.append(f"worse than {base}: {', '.join(worse)}")
    continued = [a for a in report["arms"] if a.get("diff_vs_init")]
    if continued:
        lines.append("against the checkpoint they continue (paired): " + ", ".join(
            f"{a['arm']} vs {a['diff_vs_init']['init']} {pct(a['diff_vs_init']['ci'], signed=True)} "
            f"({_verdict(a['diff_vs_init']['ci'])})" for a in continued))
        not_better = [a["arm"] for a in continued if _verdict(a["diff_vs_init"]["ci"]) != "better"]
        lines.append(f"did not beat their init: {', '.join(not_better) or 'none'}")
    kept = [a for a in report["arms"] if a.get("kept")]
    if kept:
        lines.append("kept on dev: " + ", ".join(
            f"{a['arm']} {a['kept']['candidate']}"
            + (f" (dev {a['kept']['dev_success']:.0%})" if a["kept"].get("dev_success") is not None else "")
            for a in kept))
    labelled = [a for a in report["arms"] if a.get("teacher_label_cost")]
    if labelled:
        lines.append("teacher labelling cost (DAgger), beside the teacher data's "
                     f"${(report.get('collect') or {}).get('cost') or 0:.4f}: "
                     + ", ".join(f"{a['arm']} ${a['teacher_label_cost']:.4f}" for a in labelled))
    return lines
