"""Policies: what acts in an episode. Each returns an action plus the raw model calls behind it."""

from __future__ import annotations

import asyncio
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from agentdistill.agents.parsing import majority, parse_action, parse_for
from agentdistill.distill.icd import Demo, Retrieval, render_demos
from agentdistill.envs.base import Env, Task
from agentdistill.models import ChatModel, Message, call_record
from agentdistill.skills.pack import SkillPack
from agentdistill.store.store import LabelRecord


@dataclass
class Turn:
    observation: str
    action: str
    thought: str | None = None
    text: str | None = None  # the agent message verbatim (a trainer scoring sampled text); else rendered


@dataclass
class EpisodeContext:
    task: Task
    goal: str
    observation: str  # the current one, not yet acted on
    history: list[Turn]
    env: Env
    state: dict[str, Any] = field(default_factory=dict)  # a policy's per-episode memory (e.g. loaded skills)


@dataclass
class Decision:
    action: str
    answered_by: str
    thought: str | None = None
    raw_output: str | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    label: LabelRecord | None = None  # DAgger: a teacher's action at this state, stored against the step

    @property
    def prompt_tokens(self) -> int:
        return sum(c["prompt_tokens"] for c in self.calls)

    @property
    def completion_tokens(self) -> int:
        return sum(c["completion_tokens"] for c in self.calls)

    @property
    def cost(self) -> float:
        return sum(c["cost"] for c in self.calls)

    @property
    def latency(self) -> float:
        return sum(c["latency"] for c in self.calls)


class EpisodeOver(Exception):
    """The policy has nothing more to do (e.g. the expert's gold path is exhausted)."""


class Policy(ABC):
    id: str
    model_id: str | None = None
    sampling: dict[str, Any] = {}

    @abstractmethod
    async def act(self, ctx: EpisodeContext) -> Decision: ...


class ExpertPolicy(Policy):
    """The environment's own expert (ScienceWorld's gold path, ALFWorld's planner): an offline teacher.

    `price_per_action` charges each action to the cost ledger, so the expert can stand in for a
    paid API teacher in cost studies (e.g. what a frontier model's ReAct step would cost)."""

    id = "expert"

    def __init__(self, price_per_action: float = 0.0):
        self.price_per_action = price_per_action
        self.sampling = {"price_per_action": price_per_action} if price_per_action else {}

    async def act(self, ctx: EpisodeContext) -> Decision:
        action = await asyncio.to_thread(ctx.env.expert_action)
        if action is None:
            raise EpisodeOver("the expert has no further action")
        calls = []
        if self.price_per_action:
            calls.append({"model": "expert", "messages": [], "params": {}, "outputs": [action], "prompt_tokens": 0,
                          "completion_tokens": 0, "cost": self.price_per_action, "latency": 0.0})
        return Decision(action=action, answered_by="expert", calls=calls)


SYSTEM_PROMPT = """You are an agent acting in a text environment: {env_description}.
{action_help}
Each turn you see an observation. {reply_format}"""


def system_message(env_cls: type[Env], template: str = SYSTEM_PROMPT, context: str | None = None) -> str:
    """The system prompt for an env; `context` (a skill, privileged hints) is appended when given."""
    system = template.format(env_description=env_cls.description, action_help=env_cls.action_help,
                             reply_format=env_cls.reply_format)
    return f"{system}\n\n{context}" if context else system


def render_messages(
    system: str, goal: str, history: list[Turn], observation: str | None, window: int
) -> list[Message]:
    """The chat an LLM policy sees: the last `window` turns, then the current observation.

    This is the one place prompts are rendered, so training data built from stored episodes
    (`agentdistill.train.data`) matches what the policy sees at rollout time token for token.
    With `observation=None` the chat ends on the last turn's action (a training conversation).
    """
    msgs: list[Message] = [{"role": "system", "content": system}]
    turns = history[-window:] if window > 0 else []
    omitted = len(history) - len(turns)
    head = f"Task: {goal}\n"
    if omitted:
        head += f"({omitted} earlier steps omitted)\n"
    for i, turn in enumerate(turns):
        msgs.append({"role": "user", "content": (head if i == 0 else "") + f"Observation: {turn.observation}"})
        msgs.append({"role": "assistant", "content": action_text(turn)})
    if observation is not None:
        msgs.append({"role": "user", "content": (head if not turns else "") + f"Observation: {observation}"})
    return msgs


def action_text(turn: Turn) -> str:
    if turn.text is not None:
        return turn.text
    thought = f"Thought: {turn.thought}\n" if turn.thought else ""
    if "\n" in turn.action:  # code (command actions are one line): fenced, as code envs ask for it
        return f"{thought}Action:\n```python\n{turn.action}\n```"
    return f"{thought}Action: {turn.action}"


LOAD_SKILL = re.compile(r"^\s*load[ _]skill\s+([a-z0-9-]+)\s*$", re.I)


def skill_catalog(skills: list[SkillPack]) -> str:
    lines = [f"- {p.name}: {p.description}" for p in skills]
    return ("Skills you can load (reply `Action: load skill <name>` to read one; it does not cost a step):\n"
            + "\n".join(lines))


class LLMPolicy(Policy):
    """ReAct-style: goal and a window of recent (observation, action) turns; one action per call.

    Skill packs ride along `inline` (every body in the system prompt) or by `progressive`
    disclosure (names and descriptions listed; the agent loads a body with `load skill <name>`,
    answered within the same step)."""

    def __init__(
        self,
        model: ChatModel,
        temperature: float = 0.0,
        max_tokens: int = 64,
        n: int = 1,
        history: int = 6,
        match_admissible: bool = True,
        system_prompt: str = SYSTEM_PROMPT,
        retrieval: Retrieval | None = None,
        context: str | None = None,
        skills: list[tuple[SkillPack, int | None]] | None = None,
        skill_mode: str = "inline",
    ):
        self.model = model
        self.model_id = model.id
        self.id = f"llm:{model.id}"
        self.temperature, self.max_tokens, self.n = temperature, max_tokens, n
        self.history = history
        self.match_admissible = match_admissible
        self.system_prompt = system_prompt
        self.retrieval = retrieval  # in-context distillation: teacher demos retrieved per step
        self.context = context  # extra system text, e.g. a skill
        self.skills = [p for p, _ in skills or []]
        self.skill_mode = skill_mode
        self.skill_version_id = skills[0][1] if skills else None  # the episode's pack (first, if several)
        self.sampling = {"temperature": temperature, "max_tokens": max_tokens, "n": n, "history": history}
        if retrieval:
            self.id += "+icd"
            self.sampling["icd"] = {"k": retrieval.k, "unit": retrieval.unit, "window": retrieval.window,
                                    "index": str(retrieval.index.path)}
        if skills:
            self.id += f"+skills:{skill_mode}"
            self.sampling["skills"] = [{"name": p.name, "version_id": v, "sha256": p.sha256} for p, v in skills]
            self.sampling["skill_mode"] = skill_mode

    def _skill_context(self, ctx: EpisodeContext) -> str | None:
        if not self.skills:
            return self.context
        if self.skill_mode == "inline":
            parts = [p.as_prompt() for p in self.skills]
        else:
            loaded = ctx.state.get("skills_loaded", [])
            parts = [skill_catalog(self.skills)] + [p.as_prompt() for p in self.skills if p.name in loaded]
        return "\n\n".join(([self.context] if self.context else []) + parts)

    def messages(self, ctx: EpisodeContext, demos: list[Demo] | None = None) -> list[Message]:
        system = system_message(type(ctx.env), self.system_prompt, self._skill_context(ctx))
        if demos:
            system += "\n\n" + render_demos(demos)
        return render_messages(system, ctx.goal, ctx.history, ctx.observation, self.history)

    def _load_requested(self, ctx: EpisodeContext, completions) -> str | None:
        """The skill the model asked to load (progressive disclosure), if any not loaded yet."""
        if self.skill_mode != "progressive" or not self.skills:
            return None
        names = {p.name for p in self.skills}
        loaded = ctx.state.setdefault("skills_loaded", [])
        for c in completions:
            m = LOAD_SKILL.match(parse_action(c.text, None).action or "")
            if m and m.group(1).lower() in names and m.group(1).lower() not in loaded:
                loaded.append(m.group(1).lower())
                return m.group(1).lower()
        return None

    async def act(self, ctx: EpisodeContext) -> Decision:
        demos = None
        if self.retrieval:
            recent = [t.action for t in ctx.history]
            demos = await asyncio.to_thread(self.retrieval.demos, ctx.goal, ctx.observation, recent)
        msgs = self.messages(ctx, demos)
        params = {"n": self.n, "temperature": self.temperature, "max_tokens": self.max_tokens, "stop": ["\nObservation"]}
        completions = await self.model.acomplete(msgs, **params)
        calls = [call_record(self.model.id, msgs, params, completions)]
        loaded = self._load_requested(ctx, completions)
        if loaded:  # progressive disclosure: the body joins the prompt, and the model answers again
            msgs = self.messages(ctx, demos)
            completions = await self.model.acomplete(msgs, **params)
            calls.append(call_record(self.model.id, msgs, params, completions))
        admissible = await asyncio.to_thread(ctx.env.admissible_actions) if self.match_admissible else None
        parsed = [parse_for(type(ctx.env), c.text, admissible) for c in completions]
        # with n > 1 samples, act on the most common action (self-consistency); the share that
        # agrees on it is the cascade's confidence signal
        pick, agreement = majority([p.action for p in parsed])
        chosen = parsed[pick]
        best = chosen.action
        info: dict[str, Any] = {
            "matched_admissible": chosen.matched if admissible else True,  # no list: nothing to check
            "agreement": agreement,
            # "length": the reply was cut at max_tokens (a trainer must not teach an end of turn it never sampled)
            "finish": completions[pick].finish_reason,
        }
        if len(parsed) > 1:
            info["samples"] = [p.action for p in parsed]
        if demos:
            info["demos"] = [[d.episode_id, d.step_idx] for d in demos]
        if loaded:
            info["skill_loaded"] = loaded
        if not best:
            best = ctx.env.fallback_action
            info["parse_failed"] = True
        return Decision(
            action=best,
            answered_by=self.model.id,
            thought=chosen.thought,
            raw_output=completions[pick].text,
            calls=calls,
            info=info,
        )


def policy_class(name: str) -> type[Policy]:
    """A plugin policy's class: an entry point in group `agentdistill.policies`, or "package.module:Class". It
    subclasses Policy (`act(ctx) -> Decision`) and is made as `cls(**options)` from its recipe table's `options`."""
    from agentdistill import plugins
    from agentdistill.config import BUILTIN_POLICIES

    return plugins.load(plugins.POLICIES, name, Policy, choices=BUILTIN_POLICIES)
