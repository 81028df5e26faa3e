"""Env registry keyed by string ids, like `gym.make`."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

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
    _REGISTRY[name] = target


def names() -> list[str]:
    return sorted(_REGISTRY)


def env_class(name: str) -> type[Env]:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown environment {name!r}: choose one of {', '.join(names())}")
    module, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


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
        return env_class(name)(**options)
    except TypeError as e:
        raise ConfigError(f"bad option for environment {name!r}: {e}") from e
