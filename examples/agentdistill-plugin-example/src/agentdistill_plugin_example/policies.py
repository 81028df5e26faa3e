"""Two policies: `repeat` always sends the same action (a floor to compare against); `rules` maps the counter's
situation (below / at / above its target) to an action, as the `rules` distiller learns it from a teacher."""

from __future__ import annotations

from agentdistill.agents.policies import Decision, EpisodeContext, Policy
from agentdistill_plugin_example.counter import situation


class RepeatPolicy(Policy):
    def __init__(self, action: str = "inc"):  # the recipe table's options
        self.action = action
        self.id = f"repeat:{action}"  # recorded with every episode; same id, same policy
        self.sampling = {"action": action}

    async def act(self, ctx: EpisodeContext) -> Decision:
        return Decision(action=self.action, answered_by=self.id)


class RulePolicy(Policy):
    def __init__(self, rules: dict[str, str], fallback: str = "submit"):
        self.rules, self.fallback = dict(rules), fallback
        self.id = "rules:" + ",".join(f"{k}={v}" for k, v in sorted(self.rules.items()))
        self.sampling = {"rules": self.rules}

    async def act(self, ctx: EpisodeContext) -> Decision:
        where = situation(ctx.observation)
        return Decision(action=self.rules.get(where, self.fallback), answered_by="rules", info={"situation": where})
