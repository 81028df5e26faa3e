"""ALFWorld (Shridhar et al., 2021): household tasks as TextWorld games, on the real `alfworld` package.

Data follow ALFWorld's layout and convention: `$ALFWORLD_DATA/json_2.1.1/<split>/<task dir>/<trial>/`
with `traj_data.json` and `game.tw-pddl` (`alfworld-download` fetches them; the env option `data`
overrides the variable). Splits: train, valid_seen, valid_unseen (`dev` and `test` are accepted as
valid_seen and valid_unseen). A task is an ALFWorld task type (pick_and_place_simple, ...); its
variations are that type's games in the split, in path order. Games ALFWorld marks unsolvable and
movable/sliced ones are skipped, as ALFWorld does; games not yet checked for solvability are kept.
The expert is ALFWorld's: `handcoded` (default) or `planner`; success is ALFWorld's `won`. More games
without a download: `alfworld_gen.py` (`agentdistill envs generate alfworld`).
"""

from __future__ import annotations

import json
import os
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

from agentdistill.envs.base import Env, Observation, Requirement, StepResult, Task, python_package
from agentdistill.errors import ConfigError, EnvNotReady

SPLIT_DIRS = {"train": "train", "valid_seen": "valid_seen", "valid_unseen": "valid_unseen",
              "dev": "valid_seen", "test": "valid_unseen"}
TASK_TYPES = ("pick_and_place_simple", "look_at_obj_in_light", "pick_clean_then_place_in_recep",
              "pick_heat_then_place_in_recep", "pick_cool_then_place_in_recep", "pick_two_obj_and_place")
# the engine's game state is process-global in places; ALFWorld steps take milliseconds, so take turns
_ENGINE = threading.RLock()


def installed_data() -> Path:
    """Where the install script puts ALFWorld games when none are named (the sample games beside a clone)."""
    from agentdistill.paths import cache_dir

    return cache_dir() / "alfworld"


def data_root(data: str | None = None) -> Path:
    """The env option `data`, else $ALFWORLD_DATA, else the games the install script put in the cache."""
    root = data or os.environ.get("ALFWORLD_DATA")
    if not root and (installed_data() / "json_2.1.1").is_dir():
        return installed_data()
    if not root:
        raise EnvNotReady("ALFWorld data not found: run `alfworld-download` and set ALFWORLD_DATA, "
                          "or pass the env option data = \"<dir holding json_2.1.1>\"")
    return Path(root).expanduser()


def find_games(root: Path, split: str) -> dict[str, list[Path]]:
    """task type -> game files of the split, the way ALFWorld collects them."""
    if split not in SPLIT_DIRS:
        raise ConfigError(f"unknown ALFWorld split {split!r}: use {', '.join(SPLIT_DIRS)}")
    base = root / "json_2.1.1" / SPLIT_DIRS[split]
    games: dict[str, list[Path]] = defaultdict(list)
    if not base.is_dir():
        return games
    for traj in sorted(base.rglob("traj_data.json")):
        game = traj.with_name("game.tw-pddl")
        if "movable" in str(traj.parent) or "Sliced" in str(traj.parent) or not game.exists():
            continue
        try:
            if json.loads(game.read_text()).get("solvable") is False:  # absent: not checked yet, play it
                continue
            games[json.loads(traj.read_text())["task_type"]].append(game)
        except (ValueError, KeyError):
            continue  # a broken file is ALFWorld's to report; it is not a game we can play
    return games


class ALFWorldEnv(Env):
    name = "alfworld"
    description = "ALFWorld: household tasks (find, clean, heat, cool, place objects) as text games"
    action_help = (
        "Actions are commands such as: look, inventory, go to countertop 1, open fridge 1, close fridge 1, "
        "take apple 1 from countertop 1, move apple 1 to fridge 1, clean mug 1 with sinkbasin 1, "
        "heat potato 1 with microwave 1, cool tomato 1 with fridge 1, use desklamp 1, examine cabinet 2."
    )
    fallback_action = "look"
    expert_acts_from_any_state = True  # both experts replan from the current state (expert_plan each step)

    @classmethod
    def requirements(cls, data: str | None = None, **options: Any) -> list[Requirement]:
        reqs = [python_package("alfworld", "alfworld"), python_package("textworld", "textworld")]
        root = data or os.environ.get("ALFWORLD_DATA")
        if not root and (installed_data() / "json_2.1.1").is_dir():
            root = str(installed_data())
        ok = bool(root) and (Path(root).expanduser() / "json_2.1.1").is_dir()
        reqs.append(Requirement(f"ALFWorld data at {root or '$ALFWORLD_DATA (unset)'}", ok,
                                "alfworld-download, then export ALFWORLD_DATA=<its data dir>"))
        return reqs

    def __init__(self, data: str | None = None, expert: str = "handcoded", max_episode_steps: int = 200):
        if expert not in ("handcoded", "planner"):
            raise ConfigError(f"unknown ALFWorld expert {expert!r}: use handcoded or planner")
        self.root = data_root(data)
        self.expert = expert
        self.max_episode_steps = max_episode_steps
        self._games: dict[str, dict[str, list[Path]]] = {}
        self._env = None
        self._infos: dict[str, Any] = {}

    def games(self, split: str) -> dict[str, list[Path]]:
        if split not in self._games:
            self._games[split] = find_games(self.root, split)
        return self._games[split]

    def tasks(self, split: str, names: list[str] | None = None) -> list[Task]:
        unknown = [n for n in names or [] if n not in TASK_TYPES]
        if unknown:
            raise ConfigError(f"unknown ALFWorld task type {unknown[0]!r}: use {', '.join(TASK_TYPES)}")
        games = self.games(split)
        return [Task(self.name, t, i, split) for t in (names or TASK_TYPES) for i in range(len(games.get(t, [])))]

    def reset(self, task: Task, seed: int = 0) -> Observation:
        games = self.games(task.split).get(task.name, [])
        if task.variation >= len(games):
            raise EnvNotReady(f"no ALFWorld game {task.key} in split {task.split} under {self.root}")
        return self.start(games[task.variation])

    def start(self, game: Path) -> Observation:
        """Start one game file (a .tw-pddl with traj_data.json beside it)."""
        import textworld
        import textworld.gym
        from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredExpert, AlfredInfos

        self.close()
        infos = textworld.EnvInfos(won=True, admissible_commands=True, score=True, max_score=True,
                                   extras=["gamefile", "expert_plan"])
        with _ENGINE:
            env_id = textworld.gym.register_game(str(game), infos, max_episode_steps=self.max_episode_steps,
                                                 wrappers=[AlfredDemangler(), AlfredInfos, AlfredExpert(self.expert)])
            self._env = textworld.gym.make(env_id)
            obs, self._infos = self._env.reset()
        text = obs.split("-= Welcome to TextWorld, ALFRED! =-", 1)[-1].strip()
        goal = text.split("Your task is to:", 1)[-1].strip() if "Your task is to:" in text else ""
        return Observation(text, goal, {"gamefile": str(game)})

    def step(self, action: str) -> StepResult:
        if self._env is None:
            raise EnvNotReady("ALFWorld env stepped before reset")
        with _ENGINE:
            obs, score, done, self._infos = self._env.step(action)
        won = bool(self._infos.get("won"))
        return StepResult(obs.strip(), float(won), bool(done or won), {"score": 100.0 if won else 0.0, "won": won})

    def admissible_actions(self) -> list[str] | None:
        return list(self._infos.get("admissible_commands") or []) or None

    def expert_action(self) -> str | None:
        plan = self._infos.get("extra.expert_plan") or []
        return plan[0] if plan else None

    def close(self) -> None:
        if self._env is not None:
            with _ENGINE:
                self._env.close()
            self._env = None
