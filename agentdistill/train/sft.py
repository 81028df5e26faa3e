"""`agentdistill train sft`: supervised fine-tuning on stored trajectories with TRL's SFTTrainer (+ PEFT LoRA).

Ours: the dataset (agent-only loss mask built without generation markers, see train/data.py),
device/precision choice, and recording the checkpoint in the store. TRL's: the training loop,
label building from `assistant_masks`, padding-free collation, PEFT wrapping.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentdistill.openmp import in_a_thread_of_its_own
from agentdistill.store.store import Store
from agentdistill.train.model import Hardware, LoraSpec, load_student, record_checkpoint, save_student, spec_dict

log = logging.getLogger(__name__)


@dataclass
class SFTSpec:
    base_model: str = "local/smollm2-135m"
    lora: LoraSpec | None = field(default_factory=LoraSpec)  # None: full fine-tune
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    learning_rate: float = 2e-4
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 2048
    seed: int = 0
    merge: bool = False  # save merged full weights instead of an adapter
    save_epochs: bool = False  # also save the weights at each epoch's end (candidates for dev selection)


@dataclass
class SFTResult:
    checkpoint_id: int
    path: Path
    metrics: dict[str, Any]
    epochs: list[Path] = field(default_factory=list)  # with save_epochs: the weights after each epoch


def score_only_labelled_tokens() -> None:
    """TRL's fused LM head scores only the positions that carry loss on CUDA/XPU ("compact"), but every
    position elsewhere, to keep tile shapes fixed for compilers. On CPU nothing is compiled, and with
    agent-only loss ~5% of positions carry loss: scoring all of them took over half of each training
    step (SmolLM2, measured: 43 s -> 21 s for 3 steps). TRL reads the choice from this module-level
    name; if a TRL release drops it, nothing changes but the speed."""
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if original is not None and not getattr(original, "agentdistill", False):
        def compact(device) -> bool:
            return device.type == "cpu" or original(device)

        compact.agentdistill = True
        trl_utils._use_triton = compact


def sft_trainer(dataset, spec: SFTSpec, hw: Hardware, output_dir: Path, extra_args: dict[str, Any] | None = None):
    """A TRL SFTTrainer for a tokenized dataset (input_ids + assistant_masks) from train/data.py."""
    from trl import SFTConfig, SFTTrainer

    score_only_labelled_tokens()

    # a LoRA adapter as base continues that adapter; otherwise a new one (or full fine-tune)
    model, tok = load_student(spec.base_model, spec.lora, hw)
    args = SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=spec.epochs,
        max_steps=spec.max_steps,
        learning_rate=spec.learning_rate,
        per_device_train_batch_size=spec.batch_size,
        gradient_accumulation_steps=spec.grad_accum,
        max_length=spec.max_length,
        seed=spec.seed,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        remove_unused_columns=True,
        disable_tqdm=True,
        **hw.trainer_args(),
        **(extra_args or {}),
    )
    from transformers import PrinterCallback

    cols = [c for c in dataset.column_names if c not in ("input_ids", "assistant_masks")]
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset.remove_columns(cols), processing_class=tok)
    trainer.remove_callback(PrinterCallback)  # losses go to the store and our summary, not raw dicts on stdout
    return trainer


@in_a_thread_of_its_own  # its OpenMP pool must not slow later generation (openmp.py)
def train_sft(store: Store, dataset, out: str | Path, spec: SFTSpec, hw: Hardware | None = None,
              dataset_id: int | None = None) -> SFTResult:
    hw = hw or Hardware.pick()
    out = Path(out)
    trainer = sft_trainer(dataset, spec, hw, out.with_name(out.name + ".trainer"))
    epochs: list[Path] = []
    if spec.save_epochs:
        trainer.add_callback(_EpochSaver(trainer, out.with_name(out.name + ".epochs"), epochs))
    t0 = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - t0
    logs = [h for h in trainer.state.log_history if "loss" in h]
    tokens = logs[-1].get("num_tokens", 0) if logs else 0
    metrics = {
        "train_loss": result.training_loss,
        "first_loss": logs[0]["loss"] if logs else None,
        "last_loss": logs[-1]["loss"] if logs else None,
        "steps": result.global_step,
        "tokens": tokens,
        "tokens_per_s": tokens / wall if wall else None,
        "wall_s": wall,
        "device": hw.device,
        "bf16": hw.bf16,
        "rows": len(dataset),
        "loss_curve": [[h["step"], h["loss"]] for h in logs],
    }
    save_student(trainer.model, trainer.processing_class, out, merge=spec.merge)
    config = {**spec_dict(spec), "lora": spec_dict(spec.lora)}
    ckpt = record_checkpoint(store, out, spec.base_model, "sft", dataset_id=dataset_id, config=config, metrics=metrics)
    log.info("SFT checkpoint %s at %s: loss %.3f -> %.3f", ckpt, out, metrics["first_loss"] or 0, metrics["last_loss"] or 0)
    return SFTResult(ckpt, out, metrics, epochs)


def _EpochSaver(trainer, root: Path, saved: list[Path]):
    """A callback saving the weights (adapter) at each epoch's end: the candidates dev selection picks from."""
    from transformers import TrainerCallback

    class EpochSaver(TrainerCallback):
        def on_epoch_end(self, args, state, control, **kwargs):
            saved.append(save_student(trainer.model, trainer.processing_class, root / f"epoch-{len(saved) + 1}"))

    return EpochSaver()
