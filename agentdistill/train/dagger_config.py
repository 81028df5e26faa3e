"""DAgger's configuration: the one definition of its knobs. The recipe stage (`method = "dagger"`) extends it
with what every training stage has (name, init, LoRA, learning rate); `agentdistill train dagger` takes the same
fields. Kept free of heavy imports: recipes are validated with it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class DAggerConfig(BaseModel):
    """DAgger (Ross, Gordon and Bagnell, 2011): each round the current student plays training tasks, a teacher
    labels the action it would take at every state the student visited, the labels join an aggregated dataset
    (which starts from the collected teacher episodes), and the student is retrained on it.

    The teacher is a black box: the env's expert where it replans from any state (TextWorld, ALFWorld), or any
    LLM (an API model, an OpenAI-compatible server, a local model) answering the student's own prompt."""

    model_config = ConfigDict(extra="forbid")

    teacher: str | None = None  # "expert", a model id, or None: the recipe's [teacher]
    label: Literal["all", "first_error"] = "all"  # first_error: only the states up to the student's first mistake
    beta: float = Field(0.0, ge=0, le=1)  # round 0's chance that the teacher's action is executed in a rollout
    beta_decay: float = Field(0.5, ge=0, le=1)  # beta_i = beta * beta_decay ** i
    rounds: int = Field(3, ge=1)
    episodes_per_round: int = Field(16, ge=1)  # training tasks the student plays each round
    temperature: float = Field(0.0, ge=0, le=2)  # rollout sampling: 0 visits the states greedy evaluation visits
    max_steps: int | None = Field(None, ge=1)  # student turns per rollout; None: the student's eval step limit
    teacher_data: bool = True  # the aggregated dataset starts from the collected teacher episodes
    restart: bool = True  # each round retrains from the starting checkpoint (DAgger's fresh policy) or continues
    epochs: float = Field(2.0, gt=0)  # over the aggregated dataset, each round
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    unit: Literal["chunks", "steps"] = "chunks"  # how the teacher episodes are cut into chats (train/data.py)
    dev_variations: int = Field(10, ge=0)  # dev tasks per task name that pick the kept round; 0: keep the last
    rollout_concurrency: int = Field(4, ge=1)
