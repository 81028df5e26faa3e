"""Is the teacher better than the student? A check on stored states before on-policy distillation spends compute.

At states from stored successful expert episodes (the training tasks'), the student (the starting weights, given
its own prompt) and the teacher (given its view: its own weights, or the student's weights with privileged context)
each answer greedily; the share of states where each one's action equals the expert's is its agreement. A teacher
that agrees with the expert no more often than the student does cannot teach it to act better: the trainer warns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from agentdistill.agents.parsing import parse_for
from agentdistill.agents.policies import Turn, render_messages, system_message
from agentdistill.envs.base import Task
from agentdistill.envs.registry import env_class
from agentdistill.models.base import ChatModel, Message

log = logging.getLogger(__name__)


@dataclass
class TeacherCheck:
    states: int
    student_agreement: float  # share of states where the student's greedy action is the expert's
    teacher_agreement: float

    @property
    def teacher_better(self) -> bool:
        return self.teacher_agreement > self.student_agreement

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "teacher_better": self.teacher_better}


def expert_states(episodes, history: int, max_states: int) -> list[tuple[Task, list[Message], str]]:
    """(task, the student's prompt, the expert's action) at up to `max_states` states, spread over the episodes."""
    per_episode = []
    for ep in episodes:
        steps = sorted(ep.steps, key=lambda s: s.idx)
        system = system_message(env_class(ep.task.env))
        turns = [Turn(s.observation, s.action, s.thought) for s in steps]
        task = Task(ep.task.env, ep.task.name, ep.task.variation, ep.task.split)
        per_episode.append([(task, render_messages(system, ep.task.goal or "", turns[:t], s.observation, history),
                             s.action) for t, s in enumerate(steps)])
    states: list = []
    while len(states) < max_states and any(per_episode):  # round robin: every episode contributes early states
        for group in per_episode:
            if group and len(states) < max_states:
                states.append(group.pop(0))
    return states


def check_teacher(episodes, student: ChatModel, teacher: ChatModel, teacher_view: Callable[[Task, list[Message]], list[Message]],
                  history: int, max_tokens: int, max_states: int = 24) -> TeacherCheck | None:
    """Agreement with the expert of the student and of the teacher at stored expert states (None: no states)."""
    states = expert_states(episodes, history, max_states)
    if not states:
        return None

    async def answer(model: ChatModel, msgs: list[Message]) -> str:
        (c,) = await model.acomplete(msgs, n=1, temperature=0.0, max_tokens=max_tokens, stop=["\nObservation"])
        return c.text

    async def both():
        s = asyncio.gather(*(answer(student, msgs) for _, msgs, _ in states))
        t = asyncio.gather(*(answer(teacher, teacher_view(task, msgs)) for task, msgs, _ in states))
        return await s, await t

    student_texts, teacher_texts = asyncio.run(both())

    def agreement(texts: list[str]) -> float:
        same = 0
        for (task, _, expert), text in zip(states, texts):
            action = parse_for(env_class(task.env), text, None).action or ""
            same += action.strip().lower() == expert.strip().lower()
        return same / len(states)

    return TeacherCheck(len(states), agreement(student_texts), agreement(teacher_texts))
