"""Per-role summary of a run: success rate, mean score, steps, tokens, cost, wall time."""

from __future__ import annotations

from dataclasses import dataclass

from agentdistill.store.models import Episode


@dataclass
class RoleSummary:
    role: str
    episodes: int
    errors: int
    success_rate: float
    mean_score: float | None
    mean_steps: float
    prompt_tokens: int
    completion_tokens: int
    cost: float
    wall_time: float


def summarize(episodes: list[Episode]) -> list[RoleSummary]:
    out = []
    for role in sorted({e.role for e in episodes}, key=lambda r: (r != "teacher", r)):
        eps = [e for e in episodes if e.role == role and e.status != "running"]
        scores = [e.score for e in eps if e.score is not None]
        n = max(len(eps), 1)
        out.append(
            RoleSummary(
                role=role,
                episodes=len(eps),
                errors=sum(e.status == "error" for e in eps),
                success_rate=sum(bool(e.success) for e in eps) / n,
                mean_score=sum(scores) / len(scores) if scores else None,
                mean_steps=sum(e.n_steps for e in eps) / n,
                prompt_tokens=sum(e.prompt_tokens for e in eps),
                completion_tokens=sum(e.completion_tokens for e in eps),
                cost=sum(e.cost for e in eps),
                wall_time=sum(e.wall_time for e in eps),
            )
        )
    return out
