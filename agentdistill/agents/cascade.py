"""Cascade policy (in-context distillation at inference, arXiv 2512.02543): a cheap student, shown
teacher demos retrieved for this step, samples k actions; if enough of them agree it acts, else the
teacher acts. Every step records who answered, the student's samples and agreement, and the cost
of both (the student's call is paid for even when the teacher answers)."""

from __future__ import annotations

from agentdistill.agents.policies import Decision, EpisodeContext, LLMPolicy, Policy


class CascadePolicy(Policy):
    def __init__(self, student: LLMPolicy, teacher: Policy, threshold: float = 0.5, require_admissible: bool = True):
        """The student acts when the share of its samples agreeing on the majority action is
        greater than `threshold` (0 lets it act on any parsable answer, 1 always defers) and, with
        `require_admissible`, when that action is one the env lists as admissible: a confident
        student proposing an action the env cannot execute is wrong for sure."""
        self.student = student
        self.teacher = teacher
        self.threshold = threshold
        self.require_admissible = require_admissible and student.match_admissible
        self.id = f"cascade:{student.id}->{teacher.id}"
        self.model_id = student.model_id
        self.skill_version_id = student.skill_version_id
        self.sampling = {**student.sampling, "threshold": threshold, "require_admissible": self.require_admissible,
                         "teacher": teacher.id, **{
            f"teacher_{k}": v for k, v in teacher.sampling.items()}}

    async def act(self, ctx: EpisodeContext) -> Decision:
        proposal = await self.student.act(ctx)
        agreement = proposal.info.get("agreement", 0.0)
        info = {**proposal.info, "student_action": proposal.action}
        admissible = proposal.info.get("matched_admissible", True) or not self.require_admissible
        if agreement > self.threshold and admissible and not proposal.info.get("parse_failed"):
            return Decision(proposal.action, proposal.answered_by, proposal.thought, proposal.raw_output,
                            proposal.calls, {**info, "deferred": False})
        answer = await self.teacher.act(ctx)
        return Decision(
            answer.action,
            answer.answered_by,
            answer.thought,
            answer.raw_output,
            proposal.calls + answer.calls,
            {**info, **{f"teacher_{k}": v for k, v in answer.info.items()}, "deferred": True},
        )
