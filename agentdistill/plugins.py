"""Plugins: environments, policies and distillers from outside the package, named in a recipe.

A name resolves, in this order, to
- a built-in (the env registry's names; the policies "expert", "llm", "cascade"; the distill methods),
- an entry point of the kind's group, declared by an installed package:
      [project.entry-points."agentdistill.envs"]
      counter = "mypkg.envs:CounterEnv"
- or "package.module:Class" named directly (importable from sys.path / PYTHONPATH).

Resolution needs only the name, so it happens the same way wherever a recipe is read: the driver, each Ray
env actor (every node needs the plugin's package installed, as it needs agentdistill), and `--resume`, which
re-reads the recipe stored with the run. Every failure is one line naming the problem and the fix.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import logging
import operator
import re
from collections.abc import Iterable, Mapping
from typing import Any

from agentdistill.errors import ConfigError

log = logging.getLogger(__name__)

ENVS, POLICIES, DISTILLERS = "agentdistill.envs", "agentdistill.policies", "agentdistill.distillers"
# what a kind is called in messages
WHAT = {ENVS: "environment", POLICIES: "policy", DISTILLERS: "distill method"}
_REFERENCE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")  # package.module:Class (or Outer.Inner)


def is_reference(name: str) -> bool:
    """Is `name` written as "package.module:Class" (rather than a registry or entry-point name)?"""
    return ":" in name


def entry_points(group: str) -> dict[str, importlib.metadata.EntryPoint]:
    """The installed packages' entry points of `group`, by name (read on every call: cheap, and a package
    installed meanwhile is seen)."""
    found: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in importlib.metadata.entry_points(group=group):
        found.setdefault(ep.name, ep)  # the first on sys.path wins, as imports do
    return found


def names(group: str, builtins: Iterable[str] = ()) -> list[str]:
    """Built-in names first (sorted), then the entry points of `group` that do not shadow one."""
    builtins = sorted(builtins)
    return builtins + sorted(set(entry_points(group)) - set(builtins))


def load(group: str, name: str, base: type, builtins: Mapping[str, str] | None = None,
         choices: Iterable[str] = ()) -> type:
    """The class `name` stands for in `group`: from `builtins` (name -> "module:Class"), an entry point, or
    "package.module:Class"; it must be a subclass of `base`. One-line ConfigError otherwise; `choices` are the
    built-in names listed when `name` is unknown (default: those of `builtins`)."""
    what = WHAT.get(group, group)
    builtins = builtins or {}
    if name in builtins:
        target, where = builtins[name], f"{what} {name!r}"
    elif not is_reference(name) and name in (eps := entry_points(group)):
        ep = eps[name]
        dist = getattr(ep, "dist", None)
        target = f"{ep.module}:{ep.attr}" if ep.attr else ep.module
        where = f"{what} {name!r} (entry point in {group}" + (f" of {dist.name}" if dist else "") + ")"
    elif is_reference(name):
        if not _REFERENCE.match(name):
            raise ConfigError(f"{what} {name!r}: name a plugin as \"package.module:Class\" (one colon, dotted "
                              "Python names)")
        target, where = name, f"{what} {name!r}"
    else:
        known = names(group, list(choices) or list(builtins))
        raise ConfigError(f"unknown {what} {name!r}: choose one of {', '.join(known)} or name a plugin as "
                          f"\"package.module:Class\" (or install a package declaring it in entry-point group {group})")
    cls = _import(where, target)
    if not isinstance(cls, type) or not issubclass(cls, base):
        kind = "a subclass" if isinstance(cls, type) else "a class, let alone a subclass"
        raise ConfigError(f"{where}: {target} is not {kind} of {base.__module__}.{base.__qualname__}: point it at "
                          f"a class that subclasses {base.__qualname__}")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(cls.__abstractmethods__))
        raise ConfigError(f"{where}: {target} leaves abstract methods unimplemented ({missing}): implement them")
    return cls


def _import(where: str, target: str) -> Any:
    module, _, attr = target.partition(":")
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and (module == e.name or module.startswith(e.name + ".")):
            raise ConfigError(f"{where}: no module named {e.name!r}: install the package that provides it (on every "
                              "Ray node too), put it on PYTHONPATH, or fix the name") from None
        raise ConfigError(f"{where}: module {module!r} failed to import (ModuleNotFoundError: {e}): install what "
                          "it needs") from None
    except Exception as e:  # the plugin's own import-time error: its first line, not a traceback
        log.debug("importing %s", module, exc_info=True)
        raise ConfigError(f"{where}: module {module!r} failed to import ({first_line(e)}): fix the module or the "
                          "name (--verbose shows where)") from None
    if not attr:
        return mod
    try:
        return operator.attrgetter(attr)(mod)
    except AttributeError:
        raise ConfigError(f"{where}: module {module!r} has no {attr!r}: check the class name") from None


def first_line(e: BaseException) -> str:
    """A plugin's exception as one line for the user (the traceback goes to the debug log)."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0][:300] if lines else ''}".rstrip(": ")


def check_options(where: str, cls: type, options: Mapping[str, Any]) -> None:
    """One line if `cls(**options)` would not accept these keyword arguments (checked before anything runs)."""
    try:
        inspect.signature(cls).bind(**options)
    except TypeError as e:
        accepted = [p.name for p in inspect.signature(cls).parameters.values()
                    if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        raise ConfigError(f"{where}: {cls.__name__} does not take these options ({e}): it takes "
                          f"{', '.join(accepted) or 'none'}") from None
    except ValueError:  # no signature to read (a C extension): the constructor will say
        pass
