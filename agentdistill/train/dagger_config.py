"""DAgger's configuration: the one definition of its knobs. The recipe stage (`method = "dagger"`) extends it
with what every training stage has (name, init, LoRA, learning rate); `agentdistill train dagger` takes the same
fields as options (cli_options.py: each field's description is its --help). Kept free of heavy imports:
recipes are validated with it."""

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

    teacher: str | None = Field(None, description='"expert" (the env\'s, where it replans from any state), a model '
                                "id, or unset: the recipe's [teacher] (the CLI: the expert)")
    label: Literal["all", "first_error"] = Field(
        "all", description="all: every state the student visited; first_error: the states up to its first mistake")
    beta: float = Field(0.0, ge=0, le=1, description="round 1's chance that the teacher's action is executed in a rollout")
    beta_decay: float = Field(0.5, ge=0, le=1, description="beta of round i+1 = beta * beta_decay ** i")
    rounds: int = Field(3, ge=1, description="rollout, label and retrain rounds")
    episodes_per_round: int = Field(16, ge=1, description="training tasks the student plays each round")
    temperature: float = Field(0.0, ge=0, le=2, description="rollout sampling: 0 visits the states greedy evaluation visits")
    max_steps: int | None = Field(None, ge=1, description="student turns per rollout; unset: the student's eval step limit")
    teacher_data: bool = Field(True, description="the aggregated dataset starts from the collected teacher episodes")
    restart: bool = Field(True, description="each round retrains from the starting checkpoint (DAgger's fresh policy); "
                                            "off: it continues from the last round's weights (cheaper)")
    epochs: float = Field(2.0, gt=0, description="passes over the aggregated dataset, each round")
    batch_size: int = Field(4, ge=1, description="per-device batch size")
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps")
    unit: Literal["chunks", "steps"] = Field("chunks", description="how teacher episodes become chats (train/data.py)")
    dev_variations: int = Field(10, ge=0, description="dev tasks per task name that pick the kept round; 0: keep the last")
    rollout_concurrency: int = Field(4, ge=1, description="episodes played at once")
