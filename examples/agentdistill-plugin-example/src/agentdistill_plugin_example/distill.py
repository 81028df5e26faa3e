"""The `rules` distiller: the teacher's most common action in each situation of its successful episodes,
as a `RulePolicy` the eval stage plays (a distiller that produces a policy; see agentdistill.distill.base)."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

from agentdistill.distill.base import DistillContext, Distilled, Distiller
from agentdistill.errors import AgentDistillError
from agentdistill_plugin_example.counter import situation


class RuleDistiller(Distiller):
    produces = "policy"

    def __init__(self, min_count: int = 1):  # the [[distill]] table's options
        self.min_count = min_count

    def distill(self, ctx: DistillContext) -> Distilled:
        seen: dict[str, Counter] = defaultdict(Counter)
        for episode in ctx.episodes():
            for step in episode.steps:
                seen[situation(step.observation)][step.action] += 1
        rules = {where: actions.most_common(1)[0][0] for where, actions in seen.items()
                 if actions.most_common(1)[0][1] >= self.min_count}
        if not rules:
            raise AgentDistillError(f"rules: no situation seen {self.min_count} times: lower min_count")
        path = ctx.workdir / "rules.json"  # for people to read; the policy carries its rules
        path.write_text(json.dumps(rules, indent=1, sort_keys=True))
        steps = {where: sum(actions.values()) for where, actions in seen.items()}
        ctx.say(f"  rules from {sum(steps.values())} teacher steps: {rules}")
        return Distilled(policy={"policy": "agentdistill_plugin_example.policies:RulePolicy",
                                 "options": {"rules": rules}},
                         paths=[str(path)], metrics={"steps": steps})
