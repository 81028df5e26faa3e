"""Env registry keyed by string ids, like `gym.make`: the built-in adapters, plus plugins named by entry point
(group `agentdistill.envs`) or as "package.module:Class" (see agentdistill/plugins.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agentdistill import plugins
from agentdistill.envs.base import Env, Requirement
from agentdistill.errors import ConfigError, EnvNotReady

# name -> "module:Class"; modules import lazily so a missing optional package breaks only its env
_REGISTRY: dict[str, str] = {
    "alfworld": "agentdistill.envs.alfworld:ALFWorldEnv",
    "appworld": "agentdistill.envs.appworld:AppWorldEnv",
    "scienceworld": "agentdistill.envs.scienceworld:ScienceWorldEnv",
    "textworld": "agentdistill.envs.textworld:TextWorldEnv",
    "webshop": "agentdistill.envs.webshop:WebShopEnv",
    "miniwob": "agentdistill.envs.browsergym:MiniWoBEnv",
    "visualwebarena": "agentdistill.envs.browsergym:VisualWebArenaEnv",
}


def register(name: str, target: str) -> None:
    """Add an env for this process only; an entry point also reaches Ray actors and later processes."""
    _REGISTRY[name] = target


def names() -> list[str]:
    """Built-in envs, then installed plugins' entry points."""
    return plugins.names(plugins.ENVS, _REGISTRY)


def env_class(name: str) -> type[Env]:
    return plugins.load(plugins.ENVS, name, Env, _REGISTRY)


def check_name(name: str) -> None:
    """One line if `name` resolves to no env; a plugin is imported to check it, a built-in is not (its module
    imports its optional packages)."""
    if name not in _REGISTRY:
        env_class(name)


@dataclass
class EnvStatus:
    name: str
    description: str
    requirements: list[Requirement]

    @property
    def ready(self) -> bool:
        return all(r.ok for r in self.requirements)

    def missing(self) -> str:
        return "; ".join(f"{r.what} missing: {r.fix}" for r in self.requirements if not r.ok)


def check(name: str, **options: Any) -> EnvStatus:
    cls = env_class(name)
    return EnvStatus(name, cls.description, cls.requirements(**options))


def make(name: str, **options: Any) -> Env:
    status = check(name, **options)
    if not status.ready:
        raise EnvNotReady(f"environment {name!r} is not ready: {status.missing()}")
    try:
        env = env_class(name)(**options)
    except TypeError as e:
        raise ConfigError(f"bad option for environment {name!r}: {e}") from e
    # tasks carry the env's name (Task(self.name, ...)) into the store, where later steps (training data, another
    # process, a resumed run) resolve it again: it must be the name this env was made by
    env.name = name
    return env
