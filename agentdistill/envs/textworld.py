"""TextWorld (Côté et al., 2018): generated text games, fast and offline, for tests and examples.

Games come from TextWorld's own generator (`tw-make custom`), one per (difficulty preset, seed); the
seed is the task's variation and the splits use disjoint seed ranges. Generated games are cached on
disk. The expert is the game's winning policy from the current state (`policy_commands`), so it is
the walkthrough at the start and recovers after detours.
"""

from __future__ import annotations

import re
import shutil
import threading
from pathlib import Path
from typing import Any

from filelock import FileLock

from agentdistill.envs.base import Env, Observation, Requirement, StepResult, Task, python_package
from agentdistill.errors import ConfigError, EnvNotReady
from agentdistill.paths import cache_dir

# preset -> tw-make custom options
PRESETS: dict[str, dict[str, int]] = {
    "easy": {"world-size": 3, "nb-objects": 5, "quest-length": 3},
    "medium": {"world-size": 6, "nb-objects": 10, "quest-length": 5},
    "hard": {"world-size": 10, "nb-objects": 20, "quest-length": 8},
}
# TextWorld's glulx interpreter keeps global state: two games stepping in two threads corrupt each
# other. Its steps take milliseconds, so every instance in the process takes turns.
_GLULX = threading.RLock()
SPLIT_SEEDS = {"train": range(0, 1000), "dev": range(1000, 1100), "test": range(2000, 2100)}


def game_path(preset: str, seed: int, root: Path | None = None) -> Path:
    """The .z8 file of a generated game, generating it the first time (atomically).

    Generation runs TextWorld's own `tw-make custom` code path (`GameOptions` as tw-make sets them,
    then `make_game` and `compile_game`) in this process: the same game per seed as the CLI, without
    a ~2 s interpreter start per game."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown TextWorld preset {preset!r}: use {', '.join(PRESETS)}")
    root = root or cache_dir() / "textworld"
    out = root / f"{preset}-{seed}.z8"
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if out.exists():
            return out
        tmp = root / f".{preset}-{seed}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            _make_game(PRESETS[preset], seed, tmp / out.name)
        except Exception as e:  # TextWorld's generator and the Inform 7 compiler raise many kinds
            shutil.rmtree(tmp, ignore_errors=True)
            raise EnvNotReady(f"TextWorld could not generate game {preset}-{seed}: {type(e).__name__}: {e}") from None
        for f in tmp.iterdir():  # the .json / .ni beside the .z8 first, the .z8 last: it marks completion
            if f.suffix != ".z8":
                f.replace(root / f.name)
        (tmp / out.name).replace(out)
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# TextWorld's logic parser (tatsu) is process-global and not thread-safe: it runs when the generator
# loads its knowledge base and when a game file is loaded, so generation shares the interpreter's lock
_GENERATOR = _GLULX


def _make_game(preset: dict[str, int], seed: int, path: Path) -> None:
    """`tw-make custom --seed S --world-size W --nb-objects N --quest-length L -f`, in process."""
    import textworld
    from textworld.generator import compile_game, make_game

    options = textworld.GameOptions()
    options.seeds = seed
    options.path = str(path)
    options.file_ext = ".z8"
    options.force_recompile = True
    options.nb_rooms = preset["world-size"]
    options.nb_objects = preset["nb-objects"]
    options.chaining.min_breadth, options.chaining.max_breadth = 1, 5  # tw-make's defaults, not GameOptions'
    options.chaining.min_depth = 1
    length = preset["quest-length"]
    options.chaining.min_length = options.chaining.max_length = options.chaining.max_depth = length
    with _GENERATOR:
        game = make_game(options)
    compile_game(game, options)  # Inform 7 in a subprocess: games compile in parallel


# the interpreter's prompt and status bar after each reply: ">   (padding)   -= Room =-score/moves"
_STATUS_BAR = re.compile(r"\n*>?[ \t]*(?:-= .*? =-\d+/\d+)?[ \t]*\Z")


def clean_feedback(text: str) -> str:
    """The game's reply without the prompt and status bar: ~20 tokens of padding per turn that tell a
    model nothing (the score is in the step's info), and blank-line runs squeezed."""
    return re.sub(r"\n{3,}", "\n\n", _STATUS_BAR.sub("", text)).strip()


class TextWorldEnv(Env):
    name = "textworld"
    description = "TextWorld: generated household text games (take, open, put, go), walkthrough expert"
    action_help = (
        "Actions are short commands such as: look, inventory, go north, open fridge, take apple from fridge, "
        "put apple on table, insert key into box, unlock door with key, eat apple, examine table."
    )
    fallback_action = "look"
    expert_acts_from_any_state = True  # policy_commands: the winning policy from the current state

    @classmethod
    def requirements(cls, **options: Any) -> list[Requirement]:
        return [python_package("textworld", "textworld")]

    def __init__(self, games_dir: str | None = None, variations_per_split: int = 100):
        self.games_dir = Path(games_dir) if games_dir else None
        self.n = variations_per_split
        self._env = None
        self._state: Any = None

    def tasks(self, split: str, names: list[str] | None = None) -> list[Task]:
        if split not in SPLIT_SEEDS:
            raise ConfigError(f"unknown TextWorld split {split!r}: use {', '.join(SPLIT_SEEDS)}")
        unknown = [n for n in names or [] if n not in PRESETS]
        if unknown:
            raise ConfigError(f"unknown TextWorld task {unknown[0]!r}: use {', '.join(PRESETS)}")
        seeds = list(SPLIT_SEEDS[split])[: self.n]
        return [Task(self.name, p, s, split) for p in (names or list(PRESETS)) for s in seeds]

    def reset(self, task: Task, seed: int = 0) -> Observation:
        import textworld

        self.close()
        path = game_path(task.name, task.variation, self.games_dir)
        infos = textworld.EnvInfos(admissible_commands=True, policy_commands=True, won=True, lost=True,
                                   score=True, max_score=True, objective=True, description=True)
        with _GLULX:
            self._env = textworld.start(str(path), request_infos=infos)
            self._state = self._env.reset()
        goal = self._state["objective"].strip()
        return Observation(self._state["description"].strip(), goal, {"max_score": self._state["max_score"]})

    def step(self, action: str) -> StepResult:
        if self._env is None:
            raise EnvNotReady("TextWorld env stepped before reset")
        before = self._state["score"]
        with _GLULX:
            self._state, score, done = self._env.step(action)
        won, lost = bool(self._state["won"]), bool(self._state["lost"])
        max_score = self._state["max_score"] or 1
        return StepResult(clean_feedback(self._state.feedback), float(score - before), bool(done or won or lost),
                          {"score": 100.0 * score / max_score, "won": won, "lost": lost})

    def admissible_actions(self) -> list[str] | None:
        return list(self._state["admissible_commands"]) if self._state is not None else None

    def expert_action(self) -> str | None:
        policy = self._state["policy_commands"] if self._state is not None else None
        return policy[0] if policy else None

    def close(self) -> None:
        if self._env is not None:
            with _GLULX:
                self._env.close()
            self._env = None
