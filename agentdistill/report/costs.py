"""Cost report for in-context distillation: teacher alone, student alone, student + ICD, cascade.

Per policy: success with a bootstrap 95% interval, cost per episode, share of steps the teacher
answered, the efficiency metrics of report.efficiency. Against the teacher: the cost ratio, and the upfront cost of the demos (the teacher
episodes behind the index) with the number of episodes after which the cascade has paid for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentdistill.report.efficiency import Efficiency, episode_efficiency, pooled
from agentdistill.report.stats import bootstrap_ci
from agentdistill.store.models import Episode
from agentdistill.store.store import Store


@dataclass
class PolicyCost:
    label: str
    policy_id: str
    episodes: int
    success: float
    success_low: float
    success_high: float
    cost_per_episode: float
    teacher_step_share: float  # steps answered by the teacher (cascades); 1.0 for the teacher itself
    efficiency: Efficiency | None = None  # repeated actions, step overhead, prompt cache (report.efficiency)

    def ratio_to(self, other: PolicyCost) -> float | None:
        return other.cost_per_episode / self.cost_per_episode if self.cost_per_episode > 0 else None


def _teacher_answered(episode: Episode, step) -> bool:
    # a teacher episode is all teacher; a cascade step says itself whether it deferred
    return episode.role == "teacher" or bool(step.info.get("deferred"))


def policy_cost(label: str, episodes: list[Episode]) -> PolicyCost:
    done = [e for e in episodes if e.status == "done"]
    mean, lo, hi = bootstrap_ci([float(bool(e.success)) for e in done])
    steps = [s for e in done for s in e.steps]
    teacher_steps = sum(_teacher_answered(e, s) for e in done for s in e.steps)
    return PolicyCost(
        label=label,
        policy_id=done[0].policy_id if done else "",
        episodes=len(done),
        success=mean,
        success_low=lo,
        success_high=hi,
        cost_per_episode=sum(e.cost for e in done) / max(len(done), 1),
        teacher_step_share=teacher_steps / max(len(steps), 1),
    )


def cost_report(store: Store, runs: dict[str, tuple[str, str]]) -> list[PolicyCost]:
    """`runs`: label -> (run id, role) for each policy compared."""
    out = []
    for label, (run_id, role) in runs.items():
        episodes = store.episodes(run_id=run_id, role=role, with_steps=True)
        row = policy_cost(label, episodes)
        row.efficiency = pooled(episode_efficiency(store, [e.id for e in episodes if e.status == "done"]).values())
        out.append(row)
    return out


def break_even(upfront: float, teacher: PolicyCost, cascade: PolicyCost) -> float | None:
    """Episodes after which the cascade's savings have paid for the demos (None: it never does)."""
    saving = teacher.cost_per_episode - cascade.cost_per_episode
    return upfront / saving if saving > 0 else None
