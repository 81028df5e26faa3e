"""Recipes: TOML files validated by pydantic. Bad input gets one line naming the field and the fix."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator,
                      model_serializer, model_validator)

from agentdistill.errors import ConfigError
from agentdistill.train.dagger_config import DAggerConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _PluginOptions(_Strict):
    """A table with a plugin's `options`: left out of its dump while empty, so the recipes and stage keys of
    built-in policies read as before plugins existed (finished stages stay reusable)."""

    options: dict[str, Any] = {}

    @model_serializer(mode="wrap")
    def _without_empty_options(self, handler):
        data = handler(self)
        if isinstance(data, dict) and not data.get("options", True):
            data.pop("options")
        return data


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


BUILTIN_POLICIES = ("expert", "llm", "cascade")  # built from a recipe's fields (agents/rollout.py build_policy)


def _resolves(resolve, name: str):
    """`resolve(name)` (a plugin's class), its one-line ConfigError as a ValueError: pydantic adds the field's
    location (teacher.policy, env.name, distill.0.method)."""
    try:
        return resolve(name)
    except ConfigError as e:
        raise ValueError(str(e)) from None


def _known_policy(name: str) -> str:
    if name not in BUILTIN_POLICIES:
        from agentdistill.agents.policies import policy_class

        _resolves(policy_class, name)
    return name


def _plugin_policy(name: str, options: dict[str, Any]) -> None:
    """A plugin policy takes these options (`Class(**options)` would not fail on their names), or a ValueError."""
    from agentdistill.agents.policies import policy_class
    from agentdistill.plugins import check_options

    _resolves(lambda n: check_options(f"policy {n!r}: options", policy_class(n), options), name)


class PolicySpec(_PluginOptions):
    # "expert", "llm", "cascade", or a plugin: an entry point in group agentdistill.policies or
    # "package.module:Class" (a Policy subclass made as Class(**options), `options` being its constructor's
    # keyword arguments)
    policy: str = "llm"
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

    _known = field_validator("policy")(_known_policy)

    @property
    def is_plugin(self) -> bool:
        return self.policy not in BUILTIN_POLICIES

    @model_validator(mode="after")
    def _model_matches_policy(self) -> PolicySpec:
        if self.is_plugin:
            used = [f for f in ("model", "api_base", "api_key_env", "price", "icd", "fallback") if getattr(self, f)]
            used += ["skills"] if self.skills else []
            if used:
                raise ValueError(f"{', '.join(used)}: for the built-in policies (llm, cascade, expert); a plugin "
                                 f"policy gets what it needs from options = {{ ... }}")
            _plugin_policy(self.policy, self.options)
            return self
        if self.options:
            raise ValueError(f'options are for plugin policies (policy = "package.module:Class"): remove them from '
                             f'policy "{self.policy}"')
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
            from agentdistill.models import check_credentials, check_model_id

            try:
                check_model_id(self.model, self.api_base)
                check_credentials(self.model, self.api_base, self.api_key_env)
            except ConfigError as e:  # pydantic reports ValueErrors with the field's location
                raise ValueError(str(e)) from None
        return self


class EnvSpec(_Strict):
    name: str = "scienceworld"
    split: str = "test"
    tasks: list[str] | None = None  # None: every task of the env
    variations: int | None = Field(2, ge=1)  # first N variations of each task in the split; None: all
    options: dict[str, Any] = {}  # passed to the env constructor

    @field_validator("name")
    @classmethod
    def _known_env(cls, name: str) -> str:
        from agentdistill.envs.registry import check_name

        _resolves(check_name, name)  # a built-in, an entry point of agentdistill.envs, or "package.module:Class"
        return name


class RunnerSpec(_Strict):
    concurrency: int = Field(2, ge=1, le=256)
    max_steps: int = Field(30, ge=1)
    seeds: list[int] = [0]
    max_attempts: int = Field(2, ge=1, le=10)  # an errored episode is retried up to this many attempts in all
    # the run fails (exit code 1) when more than this share of its episodes still end in error
    fail_on_error: float = Field(0.0, ge=0, le=1)
    # where episodes are played: "local" (this process) or "ray" (env instances in Ray actors across a cluster)
    executor: Literal["local", "ray"] = "local"
    address: str | None = None  # ray: the cluster ("host:6379", "ray://host:10001"); None: RAY_ADDRESS, else a local one
    cpus_per_episode: float = Field(1.0, ge=0)  # ray: CPUs each env actor reserves (a ScienceWorld JVM: 1)
    gpus_per_episode: float = Field(0.0, ge=0)  # ray: e.g. 1 for a local/... student on GPU nodes
    resources: dict[str, float] = {}  # ray: custom resources per env actor, e.g. { scienceworld = 1 }
    # how long a run's env instances (in this process, or in Ray actors) stay up, idle, for this process's next run
    # on the same env (and store): a pipeline's collect runs and eval arms skip their starts. On Ray they hold their
    # CPUs meanwhile. 0: closed with their run
    keep_envs_s: float = Field(60.0, ge=0)

    @model_validator(mode="after")
    def _ray_options_need_ray(self) -> RunnerSpec:
        if self.executor == "local" and (self.address or self.resources or self.gpus_per_episode):
            raise ValueError('address, gpus_per_episode and resources are for executor = "ray": set it or remove them')
        return self


# where a run's episodes are played, not what they are: kept out of pipeline stages' input keys, so a stage
# finished on one executor is reused on another (and keys recorded before these options existed still match)
PLACEMENT = frozenset({"executor", "address", "cpus_per_episode", "gpus_per_episode", "resources", "keep_envs_s"})


# ---- pipeline stages (collect -> distill -> eval -> report) ----------------------------------------
NAME = r"^[a-z][a-z0-9_-]{0,39}$"  # stage and arm names: short, lowercase, usable in paths
RESERVED_ARMS = ("base", "teacher")


class CollectSpec(_Strict):
    """Teacher episodes on the training split: what every distiller learns from."""

    split: str = "train"
    tasks: list[str] | None = None  # None: the [env] tasks
    variations: int | None = Field(20, ge=1)  # first N variations per task; None: all
    seeds: list[int] = [0]
    max_steps: int | None = Field(None, ge=1)  # None: the teacher's (or the runner's) step limit


class LoraTable(_Strict):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)


class _Trained(_Strict):
    """What every training method shares: where it starts from and how the weights are adapted."""

    name: str = Field(pattern=NAME)
    init: str = "base"  # the base student, or the name of an earlier distill stage whose checkpoint to continue
    lora: LoraTable | None = LoraTable()  # None (lora = false is not TOML): use full = true
    full: bool = False  # full fine-tune instead of LoRA
    learning_rate: float | None = Field(None, gt=0)  # None: the method's default for LoRA / full
    max_length: int = Field(2048, ge=64)
    seed: int = 0


class SFTStage(_Trained):
    method: Literal["sft"]
    epochs: float = Field(1.0, gt=0)
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    unit: Literal["chunks", "steps"] = "chunks"
    dev_variations: int = Field(10, ge=0)  # dev tasks per task name that pick the kept epoch (or the start); 0: last


class OPDStage(_Trained):
    """On-policy distillation; `curriculum` f2b / b2f makes it TCOD."""

    method: Literal["opd"]
    teacher_model: str | None = None  # a local model sharing the student's tokenizer; None: self-teacher + context
    context: Literal["none", "demo", "skill"] = "demo"
    skill: str | None = None  # context "skill": a skills stage's pack, or a SKILL.md / pack directory
    divergence: Literal["reverse_kl", "forward_kl", "jsd"] = "reverse_kl"
    curriculum: Literal["none", "f2b", "b2f"] = "none"
    k_start: int = Field(1, ge=1)
    eta: int = Field(1, ge=1)
    k_max: int | None = Field(None, ge=1)
    iterations: int = Field(8, ge=1)
    episodes_per_iteration: int = Field(2, ge=1)
    rollout_concurrency: int = Field(4, ge=1)  # an iteration's episodes played at once (batched model calls)
    rollout_backend: Literal["local", "vllm"] = "local"  # vllm: rollouts on a GPU engine serving the live adapter
    temperature: float = Field(0.7, gt=0, le=2)  # rollout sampling (stated with every iteration)
    max_steps: int | None = Field(None, ge=1)  # student turns per rollout; None: the student's eval step limit
    self_teacher: Literal["frozen", "live"] = "frozen"  # no teacher_model: the starting weights, frozen, or live
    anchor_kl: float = Field(0.1, ge=0)  # + this x KL(student || starting policy)
    dev_variations: int = Field(10, ge=0)  # dev tasks per task name that pick the kept iteration; 0: the last
    select_every: int = Field(2, ge=1)  # iterations between dev evaluations


class SkillSDStage(OPDStage):
    """Skill-SD: the student's own weights given a skill teach the student without it."""

    method: Literal["skill_sd"]  # type: ignore[assignment]
    context: Literal["skill"] = "skill"  # type: ignore[assignment]
    grpo_weight: float = Field(0.0, ge=0)


class DAggerStage(_Trained, DAggerConfig):
    """DAgger from the recipe's [teacher] (or `teacher`): see train/dagger_config.py for every field."""

    method: Literal["dagger"]


class SODAStage(_Trained):
    """SODA: the teacher's action at a stored state (chosen) vs a one-time snapshot of the student's own
    output at that state (rejected), aligned with DPO; for black-box teachers that give no log-probs."""

    method: Literal["soda"]
    beta: float = Field(0.1, gt=0)
    sft_weight: float = Field(0.0, ge=0)  # + this x NLL on the chosen action (TRL loss_type "sft")
    epochs: float = Field(1.0, gt=0)
    max_steps: int = -1
    batch_size: int = Field(4, ge=1)
    snapshot_temperature: float = Field(0.0, ge=0, le=2)  # how the student's rejected outputs are sampled


class SkillsStage(_Strict):
    """A skill pack: Trace2Skill over the collected trajectories, or SPARK's explore-and-verify loop."""

    name: str = Field(pattern=NAME)
    method: Literal["skills"]
    distiller: Literal["trace2skill", "spark"] = "trace2skill"
    skill: str | None = None  # the pack's name in the library; None: <recipe name>-<stage name>
    analyst: str = "trace"  # trace2skill: "trace" (offline) or a model id
    skill_mode: Literal["inline", "progressive"] = "inline"
    attempts: int = Field(3, ge=1)  # spark
    variations: int = Field(2, ge=1)  # spark: train variations per task it explores
    pdi: Literal["off", "observe", "intervene"] = "intervene"


class ICDStage(_Strict):
    """In-context distillation: a demo index over the collected teacher steps."""

    name: str = Field(pattern=NAME)
    method: Literal["icd"]
    k: int = Field(2, ge=1, le=20)
    unit: Literal["window", "trajectory"] = "window"
    window: int = Field(1, ge=0)
    retrieval: Literal["auto", "dense", "bm25"] = "auto"


class PluginStage(_Strict):
    """A distill method from a plugin (distill/base.py): an entry point of agentdistill.distillers or
    "package.module:Class", made with `options` as keyword arguments."""

    name: str = Field(pattern=NAME)
    method: str
    init: str = "base"  # the model it starts from: the base student, or an earlier training stage's checkpoint
    options: dict[str, Any] = {}

    @field_validator("method")
    @classmethod
    def _known_method(cls, method: str) -> str:
        from agentdistill.distill.base import distiller_class

        _resolves(distiller_class, method)
        return method

    @model_validator(mode="after")
    def _takes_options(self) -> PluginStage:
        from agentdistill.plugins import check_options

        _resolves(lambda m: check_options(f"distill method {m!r}: options", self.distiller(), self.options),
                  self.method)
        return self

    def distiller(self):
        from agentdistill.distill.base import distiller_class

        return distiller_class(self.method)

    @property
    def produces(self) -> str:
        return self.distiller().produces


BUILTIN_METHODS = ("sft", "opd", "skill_sd", "dagger", "soda", "skills", "icd")
CHECKPOINT_METHODS = ("sft", "opd", "skill_sd", "dagger", "soda")
PLUGIN_TAG = "plugin"


def _method_tag(data: Any) -> str | None:
    """Built-in methods by name; any other method is a plugin's (None: no method, pydantic says so)."""
    method = data.get("method") if isinstance(data, dict) else getattr(data, "method", None)
    if method is None:
        return None
    return method if method in BUILTIN_METHODS else PLUGIN_TAG


DistillSpec = Annotated[
    Annotated[SFTStage, Tag("sft")] | Annotated[OPDStage, Tag("opd")] | Annotated[SkillSDStage, Tag("skill_sd")]
    | Annotated[DAggerStage, Tag("dagger")] | Annotated[SODAStage, Tag("soda")] | Annotated[SkillsStage, Tag("skills")]
    | Annotated[ICDStage, Tag("icd")] | Annotated[PluginStage, Tag(PLUGIN_TAG)],
    Discriminator(_method_tag, custom_error_type="invalid_union_member",
                  custom_error_message="a distill stage needs a method: " + ", ".join(BUILTIN_METHODS)
                  + ' or a plugin\'s "package.module:Class"'),
]


def product(d) -> str:
    """What a distill stage produces: "checkpoint", "skills" (a pack), "icd" (a demo index) or "policy"."""
    if isinstance(d, PluginStage):
        return {"skill": "skills"}.get(d.produces, d.produces)
    return "checkpoint" if d.method in CHECKPOINT_METHODS else d.method


class ArmSpec(_PluginOptions):
    """An evaluation arm built from the base student and what the distill stages produced, or a plugin policy
    (`options`: its keyword arguments)."""

    name: str = Field(pattern=NAME)
    policy: str = "llm"  # "llm", "cascade", or a plugin policy (entry point or "package.module:Class")
    model: str = "base"  # "base" or a training stage's name
    skills: list[str] = []  # skills stages' names
    icd: str | None = None  # an icd stage's name
    n: int | None = Field(None, ge=1, le=64)  # samples per step (cascade default 3)
    temperature: float | None = Field(None, ge=0, le=2)  # cascade default 0.7
    threshold: float = Field(0.5, ge=0, le=1)

    _known = field_validator("policy")(_known_policy)

    @model_validator(mode="after")
    def _plugin_arm(self) -> ArmSpec:
        if self.policy in ("llm", "cascade"):
            if self.options:
                raise ValueError(f'options are for plugin policies: remove them from policy "{self.policy}"')
            return self
        if self.policy == "expert":
            raise ValueError('policy "expert" is the teacher arm ("teacher"): use llm, cascade or a plugin policy')
        used = [f for f in ("skills", "icd", "n", "temperature") if getattr(self, f)] + (
            ["model"] if self.model != "base" else [])
        if used:
            raise ValueError(f"{', '.join(used)}: for llm and cascade arms; a plugin policy gets what it needs from "
                             "options = { ... }")
        _plugin_policy(self.policy, self.options)
        return self


class EvalSpec(_Strict):
    """Arms on the held-out tasks of [env] (same tasks and seeds for every arm)."""

    arms: list[str] | None = None  # None: base, one arm per distill stage, every [[eval.arm]], teacher
    arm: list[ArmSpec] = []
    variations: int | None = Field(None, ge=1)  # None: [env] variations
    seeds: list[int] | None = None  # None: [runner] seeds


class ReportSpec(_Strict):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)  # the stored recipe round-trips by field name
    base: str = "base"  # the arm every paired difference is taken against
    html: str | None = None  # also write the HTML report here
    json_path: str | None = Field(None, alias="json")  # also write the report as JSON here


class Recipe(_Strict):
    name: str = "run"
    env: EnvSpec = EnvSpec()
    teacher: PolicySpec | None = None
    student: PolicySpec | None = None
    runner: RunnerSpec = RunnerSpec()
    # pipeline stages; a recipe without them is a plain rollout of [teacher] and [student]
    collect: CollectSpec | None = None
    distill: list[DistillSpec] = []
    eval: EvalSpec | None = None
    report: ReportSpec | None = None
    workdir: str = ".agentdistill"  # checkpoints, indexes and reports of pipeline stages go under here

    @model_validator(mode="after")
    def _some_role(self) -> Recipe:
        if self.teacher is None and self.student is None:
            raise ValueError("a recipe needs a [teacher] or a [student] table")
        if self.is_pipeline:
            self._check_pipeline()
        return self

    @property
    def is_pipeline(self) -> bool:
        return bool(self.collect or self.distill or self.eval or self.report)

    def _check_pipeline(self) -> None:
        if self.teacher is None or self.student is None:
            raise ValueError("a pipeline recipe needs a [teacher] (its demonstrations are collected) and a "
                             "[student] (the model distilled into)")
        if self.student.policy != "llm":  # plugin policies: a [teacher], or an [[eval.arm]]
            raise ValueError('student.policy: the pipeline\'s base student is policy "llm"; cascades are eval arms '
                             '([[eval.arm]] with policy = "cascade")')
        if self.distill and self.collect is None:
            raise ValueError("distill stages learn from teacher episodes: add a [collect] table")
        seen: dict[str, str] = {}
        for i, d in enumerate(self.distill):
            where = f"distill.{i}"
            if d.name in RESERVED_ARMS or d.name in seen:
                raise ValueError(f"{where}.name: {d.name!r} is {'reserved' if d.name in RESERVED_ARMS else 'used twice'}: "
                                 "give each distill stage its own name")
            init = getattr(d, "init", "base")
            if init != "base" and seen.get(init) != "checkpoint":
                raise ValueError(f"{where}.init: {init!r} is not an earlier training stage (sft, opd, skill_sd, dagger, "
                                 "soda, or a plugin producing a checkpoint): use \"base\" or the name of one listed "
                                 "above it")
            skill = getattr(d, "skill", None) if d.method in ("opd", "skill_sd") else None
            if skill and "/" not in skill and not skill.endswith(".md") and seen.get(skill) != "skills":
                raise ValueError(f"{where}.skill: {skill!r} is neither an earlier skills stage nor a SKILL.md path")
            if d.method in ("opd", "skill_sd") and d.context == "skill" and not skill and d.method == "opd":
                raise ValueError(f"{where}.skill: context \"skill\" needs a skill: an earlier skills stage's name or a path")
            if d.method == "opd" and d.teacher_model is None and d.context == "none":
                raise ValueError(f"{where}.context: a self-teacher needs privileged context: \"demo\" or \"skill\", "
                                 "or name a local teacher_model")
            if d.method == "dagger":
                self._check_dagger_teacher(where, d)
            if getattr(d, "dev_variations", 0) and self.env.split == "dev":
                raise ValueError(f"{where}.dev_variations: the held-out [env] split is dev, which picks the kept "
                                 "checkpoint: evaluate on test, or set dev_variations = 0")
            seen[d.name] = product(d)
        if self.eval is not None:
            arm_names = set(RESERVED_ARMS) | set(seen)
            for j, a in enumerate(self.eval.arm):
                where = f"eval.arm.{j}"
                if a.name in arm_names:
                    raise ValueError(f"{where}.name: {a.name!r} is already an arm (base, teacher and every distill "
                                     "stage are arms): choose another name")
                if a.model != "base" and seen.get(a.model) != "checkpoint":
                    raise ValueError(f"{where}.model: {a.model!r} is not a training stage: use \"base\" or a distill "
                                     "stage with method sft, opd, skill_sd, dagger, soda or a plugin producing a "
                                     "checkpoint")
                for s in a.skills:
                    if seen.get(s) != "skills":
                        raise ValueError(f"{where}.skills: {s!r} is not a skills stage")
                if a.icd is not None and seen.get(a.icd) != "icd":
                    raise ValueError(f"{where}.icd: {a.icd!r} is not an icd stage")
                arm_names.add(a.name)
            for name in self.eval.arms or []:
                if name not in arm_names:
                    raise ValueError(f"eval.arms: unknown arm {name!r}: use base, teacher, a distill stage's name "
                                     "or an [[eval.arm]] name")
        if self.report is not None and self.eval is not None and self.report.base not in self.arm_names():
            raise ValueError(f"report.base: {self.report.base!r} is not an evaluated arm")

    def _check_dagger_teacher(self, where: str, d: DAggerStage) -> None:
        from agentdistill.agents.labelling import check_labeller
        from agentdistill.envs.registry import env_class

        if self.teacher.is_plugin and d.teacher is None:
            raise ValueError(f"{where}.teacher: a plugin teacher ({self.teacher.policy}) cannot label states: name the "
                             "teacher, e.g. teacher = \"expert\" or a model id")
        teacher = d.teacher or ("expert" if self.teacher.policy == "expert" else self.teacher.model)
        if teacher != "expert" and self.teacher.policy == "cascade" and d.teacher is None:
            raise ValueError(f"{where}.teacher: a cascade cannot label states: name the teacher, e.g. teacher = "
                             "\"expert\" or a model id")
        try:
            if teacher == "expert":
                check_labeller(env_class(self.env.name), "expert")
            elif d.teacher is not None:
                from agentdistill.models import check_model_id

                check_model_id(d.teacher)
        except ConfigError as e:
            raise ValueError(f"{where}.teacher: {e}") from None

    def arm_names(self) -> list[str]:
        if self.eval is None:
            return []
        if self.eval.arms is not None:
            return list(self.eval.arms)
        return ["base", *(d.name for d in self.distill), *(a.name for a in self.eval.arm), "teacher"]

    def roles(self) -> dict[str, PolicySpec]:
        return {r: s for r, s in (("teacher", self.teacher), ("student", self.student)) if s is not None}


def _one_line(err: ValidationError, source: str) -> str:
    e = err.errors()[0]
    # a plugin's distill stage: its table's own fields (distill.0.method), not the union member's tag
    where = ".".join(str(p) for p in e["loc"] if p != PLUGIN_TAG)
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        msg = "unknown field: remove it or check its spelling"
    extra = f" (and {len(err.errors()) - 1} more problem(s))" if len(err.errors()) > 1 else ""
    return f"{source}: {where + ': ' if where else ''}{msg}{extra}"


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
        try:
            text, source = p.read_text(encoding="utf-8"), str(p)
        except UnicodeDecodeError:
            raise ConfigError(f"recipe {p} is not UTF-8 text (is it a binary file?): pass a TOML recipe") from None
        except OSError as e:
            raise ConfigError(f"recipe {p} cannot be read ({e.strerror}): check the path and its permissions") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML ({e}): fix the syntax") from None
    return parse_recipe(data, source)
