"""Checkpoints chosen on the dev split: every trainer's candidates (SFT's epochs, OPD's iterations, DAgger's
rounds, and the checkpoint it started from) play the same dev tasks greedily, and the best is kept.

The dev split is disjoint from train and test in every env (TextWorld and MiniWoB++ seed ranges, ScienceWorld's
dev variations, ALFWorld's valid_seen games), so a kept checkpoint's test score is still held out. Ties go to
the earlier candidate: the starting checkpoint is kept unless a later one is strictly better on dev, so no
distilled arm ships a checkpoint that is worse on dev than the one it started from.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from agentdistill.agents.policies import Policy
from agentdistill.agents.runner import EnvPool, EpisodeSpec, Runner
from agentdistill.envs.base import Task
from agentdistill.store.store import Store


@dataclass
class Candidate:
    name: str  # "init", "round-1", "epoch-2", "iteration-4", ...
    model: str  # its model id (local/<path>)
    dev_success: float | None = None
    dev_score: float | None = None
    dev_run: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DevSet:
    """The dev tasks and how a candidate plays them (the student's own prompt and step limit, greedy)."""

    tasks: list[Task]
    policy: Callable[[str], Policy]  # model id -> the greedy student policy with that model
    max_steps: int
    pool: EnvPool
    concurrency: int = 4
    seed: int = 0

    def score(self, store: Store, candidate: Candidate, run_name: str) -> Candidate:
        """Play every dev task once with the candidate; fills its dev success and mean score."""
        run_id = store.create_run(run_name, {"candidate": candidate.name, "model": candidate.model,
                                             "tasks": [t.key for t in self.tasks]}, kind="select")
        plan = [EpisodeSpec(i, "student", t, self.seed) for i, t in enumerate(self.tasks)]
        runner = Runner(store, run_id, {"student": self.policy(candidate.model)}, {"student": self.max_steps})
        try:
            asyncio.run(runner.run(plan, self.pool, self.concurrency, progress=False))
        except BaseException:
            store.set_run_status(run_id, "error")
            raise
        store.set_run_status(run_id, "done")
        eps = store.episodes(run_id=run_id)
        candidate.dev_run = run_id
        candidate.dev_success = sum(bool(e.success) for e in eps) / len(eps)
        candidate.dev_score = sum(e.score or 0.0 for e in eps) / len(eps)
        return candidate


def best(candidates: list[Candidate]) -> Candidate:
    """The candidate with the highest dev success (then mean score); the earliest among equals."""
    scored = [c for c in candidates if c.dev_success is not None]
    if not scored:
        return candidates[-1]
    top = max((c.dev_success, c.dev_score or 0.0) for c in scored)
    return next(c for c in scored if (c.dev_success, c.dev_score or 0.0) == top)
