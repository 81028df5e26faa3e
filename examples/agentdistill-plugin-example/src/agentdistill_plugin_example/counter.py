"""A tiny deterministic environment: bring a counter to a target number, then submit.

Task "up" starts below its target, "down" above it; variation v of a split sets the distance (1 to 4). The
expert acts from any state (it reads the counter), so it can also label states another policy reached.
"""

from __future__ import annotations

import re

from agentdistill.envs import Env, Observation, StepResult, Task
from agentdistill.errors import AgentDistillError

SPLITS = {"train": range(0, 10), "dev": range(10, 15), "test": range(15, 20)}
TASKS = ("up", "down")
ACTIONS = ["inc", "dec", "submit"]
_STATE = re.compile(r"Counter: (-?\d+)\. Target: (-?\d+)\.")


def situation(observation: str) -> str:
    """Where the counter stands against its target: "below", "at" or "above" ("unknown" if not stated)."""
    m = _STATE.search(observation)
    if not m:
        return "unknown"
    counter, target = int(m.group(1)), int(m.group(2))
    return "below" if counter < target else "above" if counter > target else "at"


class CounterEnv(Env):
    name = "counter"  # `make` replaces it with the name the env was made by (entry point or module:Class)
    description = "a counter to bring to a target number"
    action_help = "Actions: inc (add 1), dec (subtract 1), submit (once the counter equals the target)."
    fallback_action = "submit"
    expert_acts_from_any_state = True

    def __init__(self, start: int = 0):  # the recipe's [env] options
        self.start = start
        self.counter = self.target = start
        self.done = True

    def tasks(self, split: str, names: list[str] | None = None) -> list[Task]:
        if split not in SPLITS:
            raise AgentDistillError(f"{self.name} has no split {split!r}: use {', '.join(SPLITS)}")
        unknown = [n for n in names or [] if n not in TASKS]
        if unknown:
            raise AgentDistillError(f"{self.name} has no task {unknown[0]!r}: use {', '.join(TASKS)}")
        return [Task(self.name, n, v, split) for n in (names or TASKS) for v in SPLITS[split]]

    def reset(self, task: Task, seed: int = 0) -> Observation:
        distance = 1 + task.variation % 4
        self.counter, self.done = self.start, False
        self.target = self.start + (distance if task.name == "up" else -distance)
        return Observation(self._state(), goal="Bring the counter to the target, then submit.")

    def step(self, action: str) -> StepResult:
        if self.done:
            raise AgentDistillError(f"{self.name}: step after the episode ended; reset first")
        action = action.strip().lower()
        if action == "submit":
            self.done = True
            won = self.counter == self.target
            return StepResult("Submitted: " + ("right." if won else "wrong."), float(won), True,
                              {"score": 100.0 if won else 0.0, "won": won})
        if action in ("inc", "dec"):
            self.counter += 1 if action == "inc" else -1
            text = self._state()
        else:
            text = f"Unknown action {action!r}. {self._state()}"
        return StepResult(text, 0.0, False, {"score": 0.0, "won": False})

    def admissible_actions(self) -> list[str]:
        return list(ACTIONS)

    def expert_action(self) -> str | None:
        if self.done:
            return None
        return "inc" if self.counter < self.target else "dec" if self.counter > self.target else "submit"

    def _state(self) -> str:
        return f"Counter: {self.counter}. Target: {self.target}."
