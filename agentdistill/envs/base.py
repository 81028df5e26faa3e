"""The Env seam: gymnasium-like, text first (see DESIGN.md)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class Task:
    env: str
    name: str
    variation: int = 0
    split: str = "test"

    @property
    def key(self) -> str:
        return f"{self.env}:{self.name}:{self.variation}"


@dataclass
class Observation:
    text: str
    goal: str
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepResult:
    observation: str
    reward: float
    done: bool
    info: dict[str, Any] = field(default_factory=dict)  # always carries `score` and `won`


@dataclass
class Requirement:
    """One thing an env needs, how to check it, and how to get it."""

    what: str
    ok: bool
    fix: str = ""


def python_package(module: str, pip_name: str) -> Requirement:
    ok = importlib.util.find_spec(module) is not None
    return Requirement(f"python package {pip_name}", ok, f"pip install {pip_name}")


def http_status(url: str, timeout: float = 3.0, follow_redirects: bool = False) -> int | None:
    """The status a GET of `url` answers with, or None when nothing answers (checks for env servers)."""
    import httpx

    try:
        return httpx.get(url, timeout=timeout, follow_redirects=follow_redirects).status_code
    except httpx.HTTPError:
        return None


def java(min_major: int) -> Requirement:
    what = f"Java {min_major}+ runtime"
    fix = f"apt-get install openjdk-{min_major}-jre-headless"
    exe = shutil.which("java")
    if not exe:
        return Requirement(what, False, fix)
    out = subprocess.run([exe, "-version"], capture_output=True, text=True).stderr
    try:
        major = int(out.split('"')[1].split(".")[0])
    except (IndexError, ValueError):
        return Requirement(what, False, f"could not read `java -version`; {fix}")
    return Requirement(f"{what} (found {major})", major >= min_major, fix)


class Env(ABC):
    """One environment instance: one episode at a time. The runner pools instances for concurrency.

    A plugin env (an entry point in group `agentdistill.envs`, or "package.module:Class" in a recipe) subclasses
    this and implements `tasks`, `reset` and `step`; the rest has defaults. Its constructor takes the recipe's
    `[env] options` as keyword arguments."""

    # the name the env was made by (`make` sets it on each instance: a registry or entry-point name, or
    # "package.module:Class"); tasks carry it (`Task(self.name, ...)`) so stored episodes name an env that any
    # later process resolves again
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    action_help: ClassVar[str] = ""  # shown to LLM policies: the action syntax of this env
    fallback_action: ClassVar[str] = "look"  # sent when a model's output holds no action at all
    # "command": one line per action (parsed and snapped to admissible actions); "code": a code block
    action_format: ClassVar[str] = "command"
    # can `expert_action()` answer from any state another policy reached (it replans), or only replay a fixed
    # plan from the start (open-loop)? DAgger and mid-episode takeovers need the former
    expert_acts_from_any_state: ClassVar[bool] = False
    reply_format: ClassVar[str] = (
        "Reply with exactly two lines:\nThought: <one short sentence about what to do next>\nAction: <one command>"
    )

    @classmethod
    def requirements(cls, **options: Any) -> list[Requirement]:
        """What this env needs, given the options it would be made with (e.g. a data directory); `envs check`
        prints them and `make` refuses to start an env with one missing. Default: nothing."""
        return []

    @abstractmethod
    def tasks(self, split: str, names: list[str] | None = None) -> list[Task]:
        """The tasks of `split` ("train", "dev", "test", ...), every variation of each; `names`: only these
        task names (None: all). An unknown split or task name raises AgentDistillError naming the choices."""

    @abstractmethod
    def reset(self, task: Task, seed: int = 0) -> Observation:
        """Start `task` (one of `tasks()`); the same task and seed must replay the same episode (resume
        replays stored steps to continue an interrupted one)."""

    @abstractmethod
    def step(self, action: str) -> StepResult:
        """Apply one action; `info` carries `score` and `won` (the episode's outcome when `done`)."""

    def admissible_actions(self) -> list[str] | None:
        """The actions valid now (LLM policies snap their output to one), or None if the env has no list."""
        return None

    def expert_action(self) -> str | None:
        """The env's own expert's next action (gold path, planner), or None if it has none."""
        return None

    def close(self) -> None:
        pass
