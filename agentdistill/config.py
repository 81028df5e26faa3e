"""Recipes: TOML files validated by pydantic. Bad input gets one line naming the field and the fix."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agentdistill.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PriceSpec(_Strict):
    input_per_mtok: float = Field(0.0, ge=0)
    output_per_mtok: float = Field(0.0, ge=0)
    per_action: float = Field(0.0, ge=0)  # expert policies: USD charged per action (stand-in for an API teacher)


class IcdSpec(_Strict):
    """In-context distillation: retrieve teacher demos from the store for every student step."""

    index: str | None = None  # directory of the demo index; default .agentdistill/icd/<env>
    k: int = Field(3, ge=1, le=20)  # demos per step, from k different teacher episodes
    unit: Literal["window", "trajectory"] = "window"
    window: int = Field(2, ge=0)  # steps either side of the retrieved step, for unit = "window"
    split: str | None = "train"  # teacher episodes of this split feed the index (None: any)
    runs: list[str] | None = None  # only these runs' teacher episodes
    method: Literal["auto", "dense", "bm25"] = "auto"


class PolicySpec(_Strict):
    policy: Literal["expert", "llm", "cascade"] = "llm"
    model: str | None = None  # litellm id or local/<name-or-path>; required for policy = "llm"
    api_base: str | None = None  # OpenAI-compatible server, e.g. http://localhost:8000/v1
    api_key_env: str | None = None  # name of the env var holding the key (never the key itself)
    timeout: float = Field(120.0, gt=0)  # seconds per API request
    max_retries: int = Field(6, ge=0)  # on 429, 5xx, timeouts and connection errors, with backoff
    temperature: float = Field(0.0, ge=0, le=2)
    max_tokens: int = Field(64, gt=0, le=32768)
    n: int = Field(1, ge=1, le=64)
    history: int = Field(6, ge=0)
    match_admissible: bool = True
    max_steps: int | None = Field(None, ge=1)  # overrides runner.max_steps for this role
    price: PriceSpec | None = None
    icd: IcdSpec | None = None  # llm and cascade students: retrieved teacher demos in the prompt
    threshold: float = Field(0.5, ge=0, le=1)  # cascade: the student acts if its agreement exceeds this
    require_admissible: bool = True  # cascade: ...and if its action is admissible (when the env lists them)
    fallback: PolicySpec | None = None  # cascade: who acts when the student's samples disagree
    skills: list[str] = []  # skill packs: library names ("name" or "name@3") or pack directories
    skill_mode: Literal["inline", "progressive"] = "inline"

    @model_validator(mode="after")
    def _model_matches_policy(self) -> PolicySpec:
        if self.policy in ("llm", "cascade") and not self.model:
            raise ValueError(f'policy "{self.policy}" needs a model, e.g. model = "local/smollm2-135m"')
        if self.policy == "cascade" and self.fallback is None:
            raise ValueError('policy "cascade" needs a fallback teacher, e.g. fallback = { policy = "expert" }')
        if self.policy != "cascade" and self.fallback is not None:
            raise ValueError('fallback is only for policy "cascade": remove it')
        if self.policy == "expert" and self.icd is not None:
            raise ValueError('icd is for llm and cascade students: remove it from the expert')
        if self.policy == "expert" and self.skills:
            raise ValueError('skills are for llm and cascade students: remove them from the expert')
        if self.policy == "expert" and self.model:
            raise ValueError('policy "expert" uses the environment\'s own expert: remove model')
        if self.model:
            from agentdistill.models import check_model_id

            try:
                check_model_id(self.model, self.api_base)
            except ConfigError as e:  # pydantic reports ValueErrors with the field's location
                raise ValueError(str(e)) from None
        return self


class EnvSpec(_Strict):
    name: str = "scienceworld"
    split: str = "test"
    tasks: list[str] | None = None  # None: every task of the env
    variations: int | None = Field(2, ge=1)  # first N variations of each task in the split; None: all
    options: dict[str, Any] = {}  # passed to the env constructor

    @model_validator(mode="after")
    def _known_env(self) -> EnvSpec:
        from agentdistill.envs import names

        if self.name not in names():
            raise ValueError(f"unknown environment {self.name!r}: choose one of {', '.join(names())}")
        return self


class RunnerSpec(_Strict):
    concurrency: int = Field(2, ge=1, le=256)
    max_steps: int = Field(30, ge=1)
    seeds: list[int] = [0]


class Recipe(_Strict):
    name: str = "run"
    env: EnvSpec = EnvSpec()
    teacher: PolicySpec | None = None
    student: PolicySpec | None = None
    runner: RunnerSpec = RunnerSpec()

    @model_validator(mode="after")
    def _some_role(self) -> Recipe:
        if self.teacher is None and self.student is None:
            raise ValueError("a recipe needs a [teacher] or a [student] table")
        return self

    def roles(self) -> dict[str, PolicySpec]:
        return {r: s for r, s in (("teacher", self.teacher), ("student", self.student)) if s is not None}


def _one_line(err: ValidationError, source: str) -> str:
    e = err.errors()[0]
    where = ".".join(str(p) for p in e["loc"]) or "recipe"
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        msg = "unknown field: remove it or check its spelling"
    extra = f" (and {len(err.errors()) - 1} more problem(s))" if len(err.errors()) > 1 else ""
    return f"{source}: {where}: {msg}{extra}"


def parse_recipe(data: dict[str, Any], source: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_one_line(e, source)) from None


def load_recipe(path: str | Path | None = None) -> Recipe:
    """A recipe file, or the embedded default recipe when `path` is None."""
    if path is None:
        text, source = resources.files("agentdistill.recipes").joinpath("default.toml").read_text(), "default recipe"
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"recipe {p} not found: pass a TOML file (see `agentdistill run --help`)")
        text, source = p.read_text(), str(p)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML ({e}): fix the syntax") from None
    return parse_recipe(data, source)
