"""The distiller protocol: a distill method from a plugin, run by the pipeline's distill stage beside the
built-in methods (pipeline/distill.py) and recorded the same way.

    [[distill]]
    name = "rules"
    method = "mypkg.distill:RuleDistiller"   # or its entry-point name (group agentdistill.distillers)
    options = { min_count = 2 }             # -> RuleDistiller(min_count=2); checked when the recipe is read
    init = "base"                           # optional: the model it starts from ("base" or a training stage)

The stage makes the class with `options` as keyword arguments and calls `distill(ctx)`; `ctx` holds the store,
the recipe (env, teacher, student), the collect stage's teacher episodes, the model to start from and a fresh
directory for files. It returns a `Distilled` holding the one product its class declares in `produces`:

| produces     | Distilled field                         | its eval arm                         | later stages   |
|--------------|-----------------------------------------|--------------------------------------|----------------|
| "checkpoint" | model: a model id (`local/<dir>`)       | the student with that model          | `init` from it |
| "skill"      | skill: a SkillPack (saved as a version) | the base student with the pack       | opd `skill`    |
| "policy"     | policy: a policy table (a plugin's)     | that policy                          |                |

Like a built-in method's, its outputs are recorded against the pipeline run, keyed by its inputs (its table,
with `options`, and the collected episodes): an unchanged re-run reuses them while every file in `paths` (and a
checkpoint's directory) still exists. Anything it raises fails the stage in one line; `--resume` runs it again.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    from agentdistill.config import Recipe
    from agentdistill.envs.base import Env
    from agentdistill.skills.pack import SkillPack
    from agentdistill.store.store import Store

PRODUCTS = ("checkpoint", "skill", "policy")


@dataclass
class DistillContext:
    store: Store
    recipe: Recipe  # env, teacher and student specs, runner
    name: str  # the stage's name
    episode_ids: list[int]  # the collect stage's finished teacher episodes (training split)
    start_model: str  # the model id it starts from: the base student's, or the `init` stage's checkpoint
    workdir: Path  # a fresh directory for its files, never one an earlier attempt wrote
    say: Callable[[str], None] = print  # a progress line

    def episodes(self, successful_only: bool = True) -> list:
        """The teacher episodes with their steps (observation, action, reward, ... per step)."""
        eps = self.store.episodes(ids=self.episode_ids, with_steps=True, with_calls=False)
        return [e for e in eps if e.success] if successful_only else eps

    def make_env(self) -> Env:
        """A new instance of the recipe's env (close it when done)."""
        from agentdistill.envs import make

        return make(self.recipe.env.name, **self.recipe.env.options)


@dataclass
class Distilled:
    """What a distiller produced: set the field of its class's `produces`."""

    model: str | None = None  # "checkpoint": a model id the student loads, e.g. f"local/{dir}"
    checkpoint_id: int | None = None  # "checkpoint": its row, if the distiller recorded one (else it is recorded)
    skill: SkillPack | None = None  # "skill"
    policy: dict[str, Any] | None = None  # "policy": e.g. {"policy": "mypkg.policies:Rules", "options": {...}}
    paths: list[str] = field(default_factory=list)  # files the product needs: reuse only while they exist
    metrics: dict[str, Any] = field(default_factory=dict)  # JSON values, recorded with the stage's outputs


class Distiller(ABC):
    """Subclass, set `produces`, implement `distill`; the constructor takes the stage's `options`."""

    produces: ClassVar[Literal["checkpoint", "skill", "policy"]]

    @abstractmethod
    def distill(self, ctx: DistillContext) -> Distilled: ...


def distiller_class(method: str) -> type[Distiller]:
    """A plugin distiller's class (an entry point in group `agentdistill.distillers`, or "package.module:Class"),
    checked to declare what it produces."""
    from agentdistill import plugins
    from agentdistill.config import BUILTIN_METHODS
    from agentdistill.errors import ConfigError

    cls = plugins.load(plugins.DISTILLERS, method, Distiller, choices=BUILTIN_METHODS)
    if getattr(cls, "produces", None) not in PRODUCTS:
        raise ConfigError(f"distill method {method!r}: {cls.__qualname__}.produces must be one of "
                          f"{', '.join(map(repr, PRODUCTS))}: declare what it returns")
    return cls
