"""SQLAlchemy 2.x schema of the trajectory store.

Every later stage (distillers, dataset builders, trainer, cascades) reads from these tables by id;
nothing is handed between components in memory only. Schema changes go through alembic
(`agentdistill/store/migrations`).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Run(Base):
    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32), default="rollout")  # rollout, distill, train, eval
    status: Mapped[str] = mapped_column(String(16), default="running")  # running, done, error
    recipe: Mapped[dict[str, Any]] = mapped_column(JSON)  # the validated recipe, replayed by --resume
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    episodes: Mapped[list[Episode]] = relationship(back_populates="run", cascade="all, delete-orphan")


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (UniqueConstraint("env", "name", "variation", name="uq_task"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    env: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    variation: Mapped[int] = mapped_column(Integer, default=0)
    split: Mapped[str] = mapped_column(String(32))
    goal: Mapped[str | None] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Episode(Base):
    __tablename__ = "episodes"
    __table_args__ = (
        # plan_index is the episode's place in the run's deterministic plan: resume relies on it; an
        # errored episode is retried as the next attempt of the same plan index (every attempt is kept)
        UniqueConstraint("run_id", "plan_index", "attempt", name="uq_episode_attempt"),
        Index("ix_episodes_run_role", "run_id", "role"),
        # a recorded or imported session once per source (migration 0006)
        Index("uq_episode_source_external", "source", "external_id", unique=True),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    plan_index: Mapped[int] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"))
    role: Mapped[str] = mapped_column(String(16))  # teacher, student
    policy_id: Mapped[str] = mapped_column(String(300))  # "expert", "llm:local/smollm2-135m", ...
    model: Mapped[str | None] = mapped_column(String(300))
    sampling: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    skill_version_id: Mapped[int | None] = mapped_column(ForeignKey("skill_versions.id"))
    seed: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default="running")  # running, done, error
    success: Mapped[bool | None] = mapped_column(Boolean)
    reward: Mapped[float] = mapped_column(Float, default=0.0)
    score: Mapped[float | None] = mapped_column(Float)
    n_steps: Mapped[int] = mapped_column(Integer, default=0)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost: Mapped[float] = mapped_column(Float, default=0.0)
    wall_time: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # e.g. SPARK's PDI for this attempt
    # episodes agentdistill did not play itself (migration 0006): None for its own rollouts, else "gateway",
    # "import:claude-code", "import:codex", "import:atif", "import:openai-chat", "import:inspect"
    source: Mapped[str | None] = mapped_column(String(64))
    external_id: Mapped[str | None] = mapped_column(String(200))  # the session's id at its source
    tags: Mapped[list[str] | None] = mapped_column(JSON)  # an outcome attached later, with success/reward/score
    feedback: Mapped[str | None] = mapped_column(Text)
    provenance: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # file, line, sha256; or the gateway route
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    run: Mapped[Run] = relationship(back_populates="episodes")
    task: Mapped[Task] = relationship()
    steps: Mapped[list[Step]] = relationship(
        back_populates="episode", cascade="all, delete-orphan", order_by="Step.idx"
    )


class Step(Base):
    __tablename__ = "steps"
    __table_args__ = (UniqueConstraint("episode_id", "idx", name="uq_step_idx"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    episode_id: Mapped[int] = mapped_column(ForeignKey("episodes.id", ondelete="CASCADE"), index=True)
    idx: Mapped[int] = mapped_column(Integer)
    observation: Mapped[str] = mapped_column(Text)  # what the agent saw before acting
    action: Mapped[str] = mapped_column(Text)
    thought: Mapped[str | None] = mapped_column(Text)
    raw_output: Mapped[str | None] = mapped_column(Text)
    reward: Mapped[float] = mapped_column(Float, default=0.0)
    done: Mapped[bool] = mapped_column(Boolean, default=False)
    next_observation: Mapped[str | None] = mapped_column(Text)
    info: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    answered_by: Mapped[str | None] = mapped_column(String(300))  # model id, or "expert"
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost: Mapped[float] = mapped_column(Float, default=0.0)
    latency: Mapped[float] = mapped_column(Float, default=0.0)
    episode: Mapped[Episode] = relationship(back_populates="steps")
    calls: Mapped[list[ModelCall]] = relationship(cascade="all, delete-orphan", order_by="ModelCall.id")


class ModelCall(Base):
    """One model request behind a step: the prompt sent and every sample returned."""

    __tablename__ = "model_calls"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    step_id: Mapped[int] = mapped_column(ForeignKey("steps.id", ondelete="CASCADE"), index=True)
    model: Mapped[str] = mapped_column(String(300))
    messages: Mapped[list[Any]] = mapped_column(JSON)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # n, temperature, max_tokens, stop
    outputs: Mapped[list[Any]] = mapped_column(JSON)  # texts of the n samples
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost: Mapped[float] = mapped_column(Float, default=0.0)
    latency: Mapped[float] = mapped_column(Float, default=0.0)


class Label(Base):
    """A teacher's answer at a state someone else reached (DAgger): which action it would take at a stored
    step, who answered (the env's expert, or a model id), the model call behind it and what it cost. The step
    keeps what was executed; the label is what the student is trained towards."""

    __tablename__ = "labels"
    __table_args__ = (UniqueConstraint("step_id", "labeller", name="uq_label_step_labeller"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    step_id: Mapped[int] = mapped_column(ForeignKey("steps.id", ondelete="CASCADE"), index=True)
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))  # the run that asked
    labeller: Mapped[str] = mapped_column(String(300))  # "expert" or a model id
    action: Mapped[str] = mapped_column(Text)
    thought: Mapped[str | None] = mapped_column(Text)
    raw_output: Mapped[str | None] = mapped_column(Text)
    calls: Mapped[list[Any]] = mapped_column(JSON, default=list)  # the model calls behind it (redacted)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost: Mapped[float] = mapped_column(Float, default=0.0)
    latency: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Skill(Base):
    __tablename__ = "skills"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SkillVersion(Base):
    __tablename__ = "skill_versions"
    __table_args__ = (UniqueConstraint("skill_id", "version", name="uq_skill_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    skill_id: Mapped[int] = mapped_column(ForeignKey("skills.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("skill_versions.id"))
    files: Mapped[dict[str, Any]] = mapped_column(JSON)  # relative path -> text
    sha256: Mapped[str] = mapped_column(String(64))
    distiller: Mapped[str | None] = mapped_column(String(64))
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id"))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # e.g. PDI
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Dataset(Base):
    __tablename__ = "datasets"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32))  # sft, opd, ...
    path: Mapped[str] = mapped_column(Text)
    filters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    episode_ids: Mapped[list[Any]] = mapped_column(JSON, default=list)
    n_rows: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    base_model: Mapped[str] = mapped_column(String(300))
    method: Mapped[str] = mapped_column(String(32))  # sft, opd, tcod, skill-sd
    dataset_id: Mapped[int | None] = mapped_column(ForeignKey("datasets.id"))
    run_id: Mapped[str | None] = mapped_column(ForeignKey("runs.id"))
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Evaluation(Base):
    __tablename__ = "evaluations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    run_ids: Mapped[list[Any]] = mapped_column(JSON, default=list)
    skill_version_id: Mapped[int | None] = mapped_column(ForeignKey("skill_versions.id"))
    checkpoint_id: Mapped[int | None] = mapped_column(ForeignKey("checkpoints.id"))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Stage(Base):
    """One stage of a pipeline run (collect, distill.<name>, eval.<arm>, report) and what it produced.

    `key` hashes the stage's inputs (its config and the outputs of the stages it reads), so a re-run
    with unchanged inputs reuses a finished stage's outputs instead of redoing the work."""

    __tablename__ = "stages"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))  # collect, distill, eval, report
    key: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16), default="running")  # running, done, error
    outputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # run ids, checkpoint ids, paths, ...
    reused_from: Mapped[int | None] = mapped_column(ForeignKey("stages.id"))
    error: Mapped[str | None] = mapped_column(Text)
    wall_time: Mapped[float] = mapped_column(Float, default=0.0)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
