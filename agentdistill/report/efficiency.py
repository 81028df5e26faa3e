"""Efficiency metrics after PANDO (arXiv 2605.24785), per episode and pooled per arm or role.

The paper names the metrics without formulas; ours are:
- action repetition rate = repeated steps / steps, where a step is repeated when its action (lower-cased,
  trimmed) was already taken earlier in the same episode. 0 = every action new; 0.5 = half were repeats.
- step overhead ratio = the episode's steps / the fewest steps any successful teacher (or expert) episode
  took on the same task (env, task, variation) in the store. 1.0 = as short as the best demonstration;
  unknown when the store holds no successful teacher episode of that task. Pooled: sum of steps / sum of
  references over the episodes that have one.
- prompt cache utilization = cached prompt tokens / prompt tokens, over the model calls whose provider
  reported a cached count (litellm's `usage.prompt_tokens_details.cached_tokens`, or the local/ backend's
  prefix cache, recorded in the call's params as `cached_prompt_tokens`). Unknown when no call of the
  episode reports one (expert steps, providers that say nothing).

Everything is counted in SQL per episode (no step rows are loaded), so it stays cheap on big stores.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import func, select

from agentdistill.store.models import Episode, ModelCall, Step
from agentdistill.store.store import Store, latest_attempt

UNKNOWN = "unknown"


@dataclass
class Efficiency:
    """Counts behind the three ratios, so episodes pool by adding them up."""

    steps: int = 0
    repeated: int = 0
    steps_with_reference: int = 0  # steps of the episodes whose task has a teacher reference
    reference_steps: int = 0
    prompt_tokens_reported: int = 0  # prompt tokens of the calls that reported a cached count
    cached_prompt_tokens: int = 0

    @property
    def repetition_rate(self) -> float | None:
        return self.repeated / self.steps if self.steps else None

    @property
    def step_overhead(self) -> float | None:
        return self.steps_with_reference / self.reference_steps if self.reference_steps else None

    @property
    def cache_utilization(self) -> float | None:
        return self.cached_prompt_tokens / self.prompt_tokens_reported if self.prompt_tokens_reported else None

    def __add__(self, other: Efficiency) -> Efficiency:
        return Efficiency(*(a + b for a, b in zip(self.astuple(), other.astuple())))

    def astuple(self) -> tuple[int, ...]:
        return (self.steps, self.repeated, self.steps_with_reference, self.reference_steps,
                self.prompt_tokens_reported, self.cached_prompt_tokens)

    def as_dict(self) -> dict[str, float | None]:
        return {"action_repetition_rate": self.repetition_rate, "step_overhead_ratio": self.step_overhead,
                "prompt_cache_utilization": self.cache_utilization}


def pooled(values: Iterable[Efficiency]) -> Efficiency:
    total = Efficiency()
    for v in values:
        total = total + v
    return total


def _chunks(ids: list[int], size: int = 500):
    for i in range(0, len(ids), size):
        yield ids[i:i + size]


def _cached_tokens(params) -> int | None:
    value = (params or {}).get("cached_prompt_tokens") if isinstance(params, dict) else None
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def episode_efficiency(store: Store, episode_ids: Iterable[int]) -> dict[int, Efficiency]:
    """Efficiency of each episode id (absent ids are left out)."""
    ids = list(dict.fromkeys(episode_ids))
    out: dict[int, Efficiency] = {}
    if not ids:
        return out
    with store.session() as s:
        for chunk in _chunks(ids):
            # the reference of only this chunk's tasks: a page of episodes never scans every teacher episode
            tasks = select(Episode.task_id).where(Episode.id.in_(chunk)).scalar_subquery()
            best = (select(Episode.task_id, func.min(Episode.n_steps).label("best"))
                    .where(Episode.task_id.in_(tasks), Episode.role == "teacher", Episode.status == "done",
                           Episode.success.is_(True), Episode.n_steps > 0, latest_attempt())
                    .group_by(Episode.task_id).subquery())
            for eid, ref in s.execute(select(Episode.id, best.c.best).outerjoin(best, best.c.task_id == Episode.task_id)
                                      .where(Episode.id.in_(chunk))):
                out[eid] = Efficiency(reference_steps=int(ref or 0))
            action = func.lower(func.trim(Step.action))
            for eid, n, distinct in s.execute(select(Step.episode_id, func.count(Step.id), func.count(action.distinct()))
                                              .where(Step.episode_id.in_(chunk)).group_by(Step.episode_id)):
                e = out[eid]
                e.steps, e.repeated = int(n), int(n) - int(distinct)
            # cached counts live in the call's params (JSON): read the params of this chunk's calls only
            for eid, prompt, params in s.execute(select(Step.episode_id, ModelCall.prompt_tokens, ModelCall.params)
                                                 .join(ModelCall, ModelCall.step_id == Step.id)
                                                 .where(Step.episode_id.in_(chunk))):
                cached = _cached_tokens(params)
                if cached is not None:
                    out[eid].prompt_tokens_reported += int(prompt or 0)
                    out[eid].cached_prompt_tokens += cached
    for e in out.values():
        if e.reference_steps:
            e.steps_with_reference = e.steps
    return out


def run_efficiency(store: Store, run_id: str) -> dict[str, Efficiency]:
    """Pooled efficiency per role of a run's finished episodes (latest attempts)."""
    with store.session() as s:
        rows = s.execute(select(Episode.id, Episode.role).where(Episode.run_id == run_id, Episode.status != "running",
                                                                latest_attempt())).all()
    per = episode_efficiency(store, [r[0] for r in rows])
    roles: dict[str, list[Efficiency]] = {}
    for eid, role in rows:
        roles.setdefault(role, []).append(per.get(eid, Efficiency()))
    return {role: pooled(v) for role, v in roles.items()}


def fmt_ratio(value: float | None, percent: bool = False) -> str:
    if value is None:
        return UNKNOWN
    return f"{value:.0%}" if percent else f"{value:.2f}"
