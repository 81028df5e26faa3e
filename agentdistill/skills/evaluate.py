"""Paired A/B evaluation of a skill pack: the same student on the same held-out tasks and seeds,
with and without the pack. Reports success (and score) with and without, and the per-pair
difference with a bootstrap 95% interval; the evaluation is stored with both runs and the version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agentdistill.agents.rollout import resolve_skills, run_recipe
from agentdistill.config import parse_recipe
from agentdistill.errors import AgentDistillError
from agentdistill.report.stats import bootstrap_ci
from agentdistill.store.models import Evaluation
from agentdistill.store.store import Store


@dataclass
class ABResult:
    evaluation_id: int
    skill: str
    version_id: int
    runs: dict[str, str]  # without / with -> run id
    pairs: int
    metrics: dict[str, Any]


def ab_evaluate(store: Store, skill_ref: str, student: dict[str, Any], env: dict[str, Any],
                runner: dict[str, Any] | None = None, skill_mode: str = "inline", progress: bool = True) -> ABResult:
    ((pack, version_id),) = resolve_skills([skill_ref], store)
    runner = runner or {}
    recipes = {
        "without": {"name": f"ab-{pack.name}-without", "env": env, "student": student, "runner": runner},
        "with": {"name": f"ab-{pack.name}-with", "env": env, "runner": runner,
                 "student": {**student, "skills": [f"{pack.name}@{_version_number(store, version_id)}"],
                             "skill_mode": skill_mode}},
    }
    parsed = {arm: parse_recipe(r, f"A/B {arm} arm") for arm, r in recipes.items()}  # fail before running
    runs = {arm: run_recipe(store, recipe, progress=progress) for arm, recipe in parsed.items()}
    outcome: dict[str, dict[tuple, tuple[float, float, float]]] = {}
    for arm, run_id in runs.items():
        outcome[arm] = {(e.task.name, e.task.variation, e.seed): (float(bool(e.success)), e.score or 0.0, _valid_share(e))
                        for e in store.episodes(run_id=run_id, with_steps=True) if e.status == "done"}
    keys = sorted(set(outcome["with"]) & set(outcome["without"]))
    if not keys:
        raise AgentDistillError("no task finished in both arms: see `agentdistill runs show` for the errors")
    metrics: dict[str, Any] = {"pairs": len(keys), "skill_mode": skill_mode}
    for i, what in enumerate(("success", "score", "valid_actions")):
        a = [outcome["without"][k][i] for k in keys]
        b = [outcome["with"][k][i] for k in keys]
        mean, low, high = bootstrap_ci([y - x for x, y in zip(a, b)])
        metrics[what] = {"without": sum(a) / len(a), "with": sum(b) / len(b), "diff": mean, "ci95": [low, high]}
    with store.session() as s, s.begin():
        row = Evaluation(name=f"ab:{pack.name}", run_ids=[runs["without"], runs["with"]],
                         skill_version_id=version_id, metrics=metrics)
        s.add(row)
        s.flush()
        eval_id = row.id
    return ABResult(eval_id, pack.name, version_id, runs, len(keys), metrics)


def _valid_share(ep) -> float:
    """Share of the episode's actions the environment accepted (a weak student's first gain)."""
    from agentdistill.skills.trace2skill import rejected

    if not ep.steps:
        return 0.0
    return sum(not rejected(s) for s in ep.steps) / len(ep.steps)


def _version_number(store: Store, version_id: int) -> int:
    from agentdistill.skills import library

    return library.get_by_id(store, version_id).version
