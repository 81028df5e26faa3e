"""Labellers: a teacher asked what it would do at a state another policy reached (DAgger's expert queries).

Two kinds of teacher can answer from an arbitrary state, and both are black boxes (no log-probs):
- the env's own expert, where it replans from the current state (`Env.expert_acts_from_any_state`:
  TextWorld's `policy_commands`, ALFWorld's experts). An open-loop expert (ScienceWorld's gold path) only
  replays a plan from the start, so it is refused before anything runs;
- any LLM (an API model, an OpenAI-compatible server, a local model), given exactly the prompt the student
  saw at that state.

`LabelledPolicy` plays the student, asks the labeller at every state, and with probability beta executes the
teacher's action instead of the student's (DAgger's mixture policy, Ross et al. 2011). The label is stored
against the step (the `labels` table), whichever action was executed.
"""

from __future__ import annotations

import asyncio
import random
from abc import ABC, abstractmethod

from agentdistill.agents.parsing import parse_for
from agentdistill.agents.policies import Decision, EpisodeContext, LLMPolicy, Policy
from agentdistill.envs.base import Env
from agentdistill.errors import ConfigError
from agentdistill.models import ChatModel, call_record
from agentdistill.store.store import LabelRecord


class Labeller(ABC):
    id: str

    @abstractmethod
    async def label(self, ctx: EpisodeContext, student: LLMPolicy) -> LabelRecord | None:
        """The teacher's action at `ctx`'s state (None: it has none there, e.g. the game is already won)."""


class ExpertLabeller(Labeller):
    """The env's expert at the live state; `price_per_action` charges each label like the expert's actions."""

    id = "expert"

    def __init__(self, price_per_action: float = 0.0):
        self.price_per_action = price_per_action

    async def label(self, ctx: EpisodeContext, student: LLMPolicy) -> LabelRecord | None:
        action = await asyncio.to_thread(ctx.env.expert_action)
        if action is None:
            return None
        calls = []
        if self.price_per_action:
            calls.append({"model": "expert", "messages": [], "params": {}, "outputs": [action], "prompt_tokens": 0,
                          "completion_tokens": 0, "cost": self.price_per_action, "latency": 0.0})
        return LabelRecord("expert", action, calls=calls, cost=self.price_per_action)


class LLMLabeller(Labeller):
    """An LLM teacher answering the student's own prompt at that state (greedy by default)."""

    def __init__(self, model: ChatModel, temperature: float = 0.0, max_tokens: int = 64):
        self.model, self.temperature, self.max_tokens = model, temperature, max_tokens
        self.id = model.id

    async def label(self, ctx: EpisodeContext, student: LLMPolicy) -> LabelRecord | None:
        msgs = student.messages(ctx)  # exactly what the student was shown
        params = {"n": 1, "temperature": self.temperature, "max_tokens": self.max_tokens, "stop": ["\nObservation"]}
        (completion,) = await self.model.acomplete(msgs, **params)
        admissible = await asyncio.to_thread(ctx.env.admissible_actions) if student.match_admissible else None
        parsed = parse_for(type(ctx.env), completion.text, admissible)
        if not parsed.action:  # a teacher reply with no action labels nothing
            return None
        call = call_record(self.model.id, msgs, params, [completion])
        return LabelRecord(self.model.id, parsed.action, parsed.thought, completion.text, [call],
                           call["prompt_tokens"], call["completion_tokens"], call["cost"], call["latency"])


def check_labeller(env_cls: type[Env], labeller: str) -> None:
    """One line, before anything runs, for a teacher that cannot label arbitrary states."""
    if labeller == "expert" and not env_cls.expert_acts_from_any_state:
        raise ConfigError(
            f"DAgger needs a teacher that can act from any state the student reaches, and {env_cls.name}'s expert "
            "only replays its plan from the start (open-loop): use an LLM teacher (teacher = \"<model id>\") or an "
            "env whose expert replans (textworld, alfworld)")


class LabelledPolicy(Policy):
    """The student acts; the labeller labels every state; with probability `beta` the label is executed."""

    def __init__(self, student: LLMPolicy, labeller: Labeller, beta: float = 0.0, seed: int = 0):
        self.student, self.labeller, self.beta = student, labeller, beta
        self.rng = random.Random(seed)
        self.id = f"{student.id}+dagger:{labeller.id}"
        self.model_id = student.model_id
        self.sampling = {**student.sampling, "beta": beta, "labeller": labeller.id}

    async def act(self, ctx: EpisodeContext) -> Decision:
        label = await self.labeller.label(ctx, self.student)
        mine = await self.student.act(ctx)
        if label is not None and self.beta > 0 and self.rng.random() < self.beta:
            # the teacher's turn is executed (and rendered in later prompts); the student's proposal is kept in
            # info. The step keeps the student's calls (that compute was spent); the teacher's cost is the label's
            decision = Decision(label.action, label.labeller, label.thought, mine.raw_output, mine.calls,
                                {**mine.info, "student_action": mine.action, "teacher_executed": True})
        else:
            decision = mine
        decision.label = label
        return decision


def build_labeller(spec, store=None, env_name: str = "textworld") -> Labeller:
    """A labeller from a teacher's policy spec (a recipe's [teacher], or a model id given as `teacher`): the
    env's expert, or the spec's model answering greedily unless the spec says otherwise."""
    from agentdistill.agents.rollout import build_policy
    from agentdistill.config import PolicySpec

    if isinstance(spec, str):
        spec = PolicySpec(policy="expert") if spec == "expert" else PolicySpec(policy="llm", model=spec)
    if spec.policy == "expert":
        return ExpertLabeller(spec.price.per_action if spec.price else 0.0)
    if spec.policy != "llm":
        raise ConfigError(f'a DAgger teacher is policy "expert" or "llm", not "{spec.policy}": name a model or the expert')
    policy = build_policy(spec, store, env_name)
    return LLMLabeller(policy.model, spec.temperature, spec.max_tokens)
