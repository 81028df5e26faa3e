"""ScienceWorld (Wang et al., 2022): 30 science tasks in a text simulator running on the JVM.

Uses the `scienceworld` wheel (its jar ships inside). Gold action sequences, available after
`load(..., generateGoldPath=True)`, are the expert teacher. Valid actions are computed only on
demand: ScienceWorld's own `step()` computes look/inventory/valid-action lists on every call, which
costs more than the step itself, so we drive its server directly and ask for them when needed.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from agentdistill.envs.base import Env, Observation, Requirement, StepResult, Task, java, python_package
from agentdistill.errors import ConfigError
from agentdistill.paths import cache_dir, write_atomic

log = logging.getLogger(__name__)

SPLITS = {"train": "get_variations_train", "dev": "get_variations_dev", "test": "get_variations_test"}
_splits_lock = threading.Lock()


class ScienceWorldEnv(Env):
    name = "scienceworld"
    description = "ScienceWorld: 30 elementary-science tasks, train/dev/test variations, gold-path expert"
    action_help = (
        "Actions are short commands such as: look around, open door to kitchen, go to kitchen, "
        "pick up thermometer, move thermometer to inventory, use thermometer on water, focus on "
        "red wire, connect battery anode to red wire terminal 1, activate stove, wait1, inventory."
    )

    fallback_action = "look around"

    @classmethod
    def requirements(cls, **options: Any) -> list[Requirement]:
        return [python_package("scienceworld", "scienceworld"), java(11)]

    def __init__(self, simplifications: str = "", step_limit: int = 10_000):
        from scienceworld import ScienceWorldEnv as _SW

        self.simplifications = simplifications
        self._sw = _SW("", envStepLimit=step_limit)
        self._step_limit = step_limit
        self._gold: list[str] = []
        self._t = 0  # position on the gold path
        self._last_score = 0
        self._task_names: list[str] = list(self._sw.get_task_names())

    # ---- tasks ----------------------------------------------------------------------------------
    @property
    def task_names(self) -> list[str]:
        return self._task_names

    def _variations(self, task: str) -> dict[str, list[int]]:
        """Variation ids per split for one task, cached on disk (loading some tasks takes seconds)."""
        from importlib.metadata import version

        path = cache_dir() / f"scienceworld-{version('scienceworld')}-splits.json"
        with _splits_lock:
            cached: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
            if task not in cached:
                self._sw.load(task, 0, "")
                cached[task] = {s: list(getattr(self._sw, fn)()) for s, fn in SPLITS.items()}
                write_atomic(path, json.dumps(cached))
            return cached[task]

    def tasks(self, split: str, names: list[str] | None = None) -> list[Task]:
        if split not in SPLITS:
            raise ConfigError(f"unknown ScienceWorld split {split!r}: use train, dev or test")
        unknown = sorted(set(names or []) - set(self._task_names))
        if unknown:
            raise ConfigError(
                f"unknown ScienceWorld task(s) {', '.join(unknown)}: see `agentdistill envs list --tasks`"
            )
        return [
            Task(self.name, n, v, split) for n in (names or self._task_names) for v in self._variations(n)[split]
        ]

    # ---- episode --------------------------------------------------------------------------------
    def reset(self, task: Task, seed: int = 0) -> Observation:
        # ScienceWorld is deterministic given (task, variation); the seed is recorded, not used.
        self._sw.load(task.name, task.variation, self.simplifications, generateGoldPath=True)
        self._sw.server.reset()
        self._last_score, self._t = 0, 0
        self._gold = list(self._sw.get_gold_action_sequence())
        text = self._sw.server.step("look around")
        goal = self._sw.get_task_description()
        return Observation(text=text, goal=goal, info={"score": 0, "won": False, "gold_length": len(self._gold)})

    def step(self, action: str) -> StepResult:
        server = self._sw.server
        text = server.step(action)
        score = int(round(100 * server.getScore()))
        done = bool(server.getCompleted()) or score < 0 or self._sw.get_num_moves() > self._step_limit
        reward = score - self._last_score
        self._last_score = score
        if self._t < len(self._gold) and action.strip().lower() == self._gold[self._t].lower():
            self._t += 1  # the gold path advances only when its next action is what was executed
        return StepResult(text, float(reward), done, {"score": score, "won": score >= 100})

    def admissible_actions(self) -> list[str]:
        return list(self._sw.get_valid_action_object_combinations())

    def expert_action(self) -> str | None:
        # The gold path is open-loop; we point at its first action not yet executed, so an expert
        # that takes over from another policy (a cascade's teacher) resumes where the path left off.
        # If the other policy changed the world in ways the path does not expect, it may still fail.
        return self._gold[self._t] if self._t < len(self._gold) else None

    def close(self) -> None:
        try:
            self._sw.close()
        except Exception:  # the JVM may already be gone; closing must never raise
            log.debug("scienceworld close failed", exc_info=True)
        # scienceworld's __del__ closes again and prints BrokenPipe tracebacks at exit: once is enough
        self._sw.close = lambda: None
