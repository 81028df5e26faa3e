"""CLI options derived from a method's config class (TRL style: one config, the recipe stage and the command
line both read it). A command decorated with `config_options(Config)` gets one `--field-name` option per
field, with the field's default, type and description as its --help, and receives the validated config as its
`config` argument: a bad value is the config's own one-line error, as in a recipe."""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal, Optional

import typer
from pydantic import BaseModel, ValidationError
from rich.markup import escape

from agentdistill.errors import ConfigError


def _option_type(annotation: Any) -> tuple[Any, str]:
    """(the type typer parses, a note for --help): Literal choices parse as text and are listed in the help."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        inner, note = _option_type(next(a for a in args if a is not type(None)))
        return Optional[inner], note  # noqa: UP007 (typer reads Optional)
    if typing.get_origin(annotation) is Literal:
        return str, f" [{' | '.join(map(str, args))}]"
    return annotation, ""


def config_options(config_cls: type[BaseModel], exclude: tuple[str, ...] = ()) -> Callable:
    fields = {name: f for name, f in config_cls.model_fields.items() if name not in exclude}

    def decorate(fn: Callable) -> Callable:
        sig = inspect.signature(fn, eval_str=True)  # cli.py's annotations are strings (postponed evaluation)
        own = [p for p in sig.parameters.values() if p.name != "config"]
        taken = {p.name for p in own}
        clash = taken & set(fields)
        if clash:
            raise TypeError(f"{fn.__name__} already has options {sorted(clash)} of {config_cls.__name__}")
        derived = []
        for name, f in fields.items():
            kind, note = _option_type(f.annotation)
            flag = "--" + name.replace("_", "-")
            if kind is bool:  # a switch both ways: --restart / --no-restart
                flag = f"{flag}/--no-{flag[2:]}"
            option = typer.Option(flag, help=escape((f.description or "") + note),
                                  rich_help_panel=config_cls.__name__.removesuffix("Config"))
            derived.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                             annotation=Annotated[kind, option]))

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name in fields}
            try:
                config = config_cls(**values)
            except ValidationError as e:
                err = e.errors()[0]
                where = "--" + str(err["loc"][0]).replace("_", "-") if err["loc"] else config_cls.__name__
                raise ConfigError(f"{where}: {err['msg']}") from None
            return fn(config=config, **kwargs)

        # the command's own options first, then the config's
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + derived
        command.__signature__ = sig.replace(parameters=params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        del command.__wrapped__  # typer must read this signature, not fn's
        return command

    return decorate
