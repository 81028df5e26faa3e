"""Privileged context for a teacher that is the student's own weights (self-distillation).

- "demo": the actions of a stored successful expert episode of the very same task variation
  (on-policy self-distillation with a reference solution).
- "skill": skill texts (Skill-SD): SKILL.md files given by the user, or, until a task has a pack,
  a skill summary made from the store's successful teacher trajectories of the same task family.
  Several candidate skills per task are chosen among by UCB1 (`SkillBandit`).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from agentdistill.envs.base import Task
from agentdistill.errors import ConfigError
from agentdistill.train.data import EpisodeFilter
from agentdistill.store.store import Store


def _actions(ep) -> list[str]:
    return [s.action for s in sorted(ep.steps, key=lambda s: s.idx)]


def expert_trajectories(store: Store, env: str, runs: list[str] | None = None) -> dict[Task, list[str]]:
    """task (its split included: ALFWorld numbers variations within each split, so a train task and a test
    game can share env:name:variation) -> actions of the shortest successful teacher episode of it."""
    best: dict[Task, list[str]] = {}
    for ep in EpisodeFilter(role="teacher", success=True, env=env, runs=runs).select(store):
        key = Task(ep.task.env, ep.task.name, ep.task.variation, ep.task.split)
        acts = _actions(ep)
        if key not in best or len(acts) < len(best[key]):
            best[key] = acts
    return best


def demo_context(actions: list[str]) -> str:
    steps = "\n".join(f"{i}. {a}" for i, a in enumerate(actions, 1))
    return f"Reference solution for this exact task (an expert's actions, in order):\n{steps}"


def trajectory_skills(store: Store, env: str, task_names: list[str], split: str | None = "train",
                      per_task: int = 3) -> dict[str, list[str]]:
    """task name -> up to `per_task` skill texts, each summarizing one successful teacher episode."""
    by_task: dict[str, list] = defaultdict(list)
    for ep in EpisodeFilter(role="teacher", success=True, env=env, split=split, tasks=task_names).select(store):
        by_task[ep.task.name].append(ep)
    out = {}
    for name in task_names:
        eps = sorted(by_task.get(name, []), key=lambda e: (e.n_steps, e.id))[:per_task]
        out[name] = [
            f"Skill: {name}\nWhen to use: tasks like \"{(ep.task.goal or name).splitlines()[0][:200]}\"\n"
            "A procedure that solved a variation of this task (objects and places may differ in yours):\n"
            + "\n".join(f"{i}. {a}" for i, a in enumerate(_actions(ep), 1))
            for ep in eps
        ]
    return out


def load_skill_file(path: str | Path) -> str:
    """A SKILL.md (or a pack directory holding one) -> its text without the YAML front matter."""
    p = Path(path)
    if p.is_dir():
        p = p / "SKILL.md"
    if not p.is_file():
        raise ConfigError(f"skill {path} not found: pass a SKILL.md file or a skill pack directory")
    text = p.read_text()
    body = re.sub(r"\A---\n.*?\n---\n", "", text, flags=re.S).strip()
    if not body:
        raise ConfigError(f"skill {p} has no body: write the instructions below the front matter")
    return body


@dataclass
class SkillBandit:
    """UCB1 per task over its candidate skills: pick untried skills first, then mean + c * sqrt(ln N / n)."""

    c: float = 1.0
    counts: dict[str, list[int]] = field(default_factory=dict)
    totals: dict[str, list[float]] = field(default_factory=dict)

    def choose(self, task: str, n_skills: int) -> int:
        counts = self.counts.setdefault(task, [0] * n_skills)
        totals = self.totals.setdefault(task, [0.0] * n_skills)
        for i, n in enumerate(counts):
            if n == 0:
                return i
        total = sum(counts)
        scores = [totals[i] / counts[i] + self.c * math.sqrt(math.log(total) / counts[i]) for i in range(n_skills)]
        return max(range(n_skills), key=lambda i: scores[i])

    def update(self, task: str, skill: int, reward: float) -> None:
        self.counts[task][skill] += 1
        self.totals[task][skill] += reward
