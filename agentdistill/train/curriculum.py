"""TCOD temporal curricula for multi-turn on-policy distillation (Wang et al., arXiv 2604.24005).

Vanilla OPD lets the student roll out the whole horizon from the first update; its errors compound
and push later turns far from anything the teacher can supervise. TCOD grows the horizon the student
is trained on with a schedule k(n) = min(k_start + floor(n / eta), k_max) over training iterations n:

- front-to-back (f2b): the student rolls out only its first k turns;
- back-to-front (b2f): the expert's stored trajectory is replayed for all but its last k turns, then
  the student continues from there.

Evaluation always uses the full horizon (a normal rollout with the trained checkpoint).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from agentdistill.agents.policies import Decision, EpisodeContext, EpisodeOver, Policy
from agentdistill.envs.base import Task
from agentdistill.errors import ConfigError


@dataclass
class Curriculum:
    mode: Literal["none", "f2b", "b2f"] = "none"
    k_start: int = 1
    eta: int = 1  # iterations per +1 turn (TCOD's checkpoint_steps)
    k_max: int | None = None  # None: grow without bound (the env's step limit still applies)

    def __post_init__(self):
        if self.mode not in ("none", "f2b", "b2f"):
            raise ConfigError(f"unknown curriculum {self.mode!r}: use none, f2b or b2f")
        if self.k_start < 1 or self.eta < 1 or (self.k_max is not None and self.k_max < self.k_start):
            raise ConfigError("curriculum needs k_start >= 1, eta >= 1 and k_max >= k_start")

    def window(self, n: int) -> int | None:
        """Turns the student is trained on at iteration n (0-based); None = the full horizon (no curriculum)."""
        if self.mode == "none":
            return None
        k = self.k_start + n // self.eta
        return min(k, self.k_max) if self.k_max is not None else k


class PrefixReplayPolicy(Policy):
    """b2f rollouts: replay a stored expert trajectory's first `len(prefix)` actions, then the student acts.

    The student's turns are capped at `student_turns`; replayed turns are answered_by "replay" and
    carry no loss."""

    def __init__(self, student: Policy, prefixes: dict[Task, list[str]], student_turns: int):
        self.student, self.prefixes, self.student_turns = student, prefixes, student_turns
        self.id, self.model_id, self.sampling = student.id, student.model_id, student.sampling

    async def act(self, ctx: EpisodeContext) -> Decision:
        prefix = self.prefixes.get(ctx.task, [])
        t = len(ctx.history)
        if t < len(prefix):
            return Decision(action=prefix[t], answered_by="replay", info={"replayed": True})
        if t - len(prefix) >= self.student_turns:
            raise EpisodeOver("the curriculum's student turns are used up")
        return await self.student.act(ctx)
