"""What every trainer shares: picking the device and precision, loading a trainable student, LoRA, checkpoints in the store."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agentdistill.errors import ConfigError
from agentdistill.store.models import Checkpoint
from agentdistill.store.store import Store

log = logging.getLogger(__name__)


@dataclass
class LoraSpec:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"

    def config(self):
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=self.target_modules, task_type="CAUSAL_LM")


@dataclass
class Hardware:
    device: str  # "cuda" or "cpu"
    bf16: bool

    @classmethod
    def pick(cls, device: str = "auto", bf16: bool | None = None) -> Hardware:
        import torch

        cuda = torch.cuda.is_available()
        if device == "auto":
            device = "cuda" if cuda else "cpu"
        if device == "cuda" and not cuda:
            raise ConfigError("device cuda requested but torch sees no GPU: use --device cpu or auto")
        if device not in ("cuda", "cpu"):
            raise ConfigError(f"unknown device {device!r}: use auto, cuda or cpu")
        if bf16 is None:  # bf16 where the hardware computes in it natively (mixed precision: fp32 master weights)
            from agentdistill.models.local import native_bf16

            bf16 = native_bf16(device)
        return cls(device, bf16)

    def trainer_args(self) -> dict[str, Any]:
        """TRL/transformers TrainingArguments fields: CPU needs use_cpu and an explicit bf16. Activations are
        recomputed in the backward pass (gradient checkpointing): measured on 2 CPU cores, a LoRA step of
        SmolLM2-135M at batch 4 x 2048 tokens peaked at 5.0 GB with it and 12.2 GB without, and was not
        slower (26 s against 39 s: less memory traffic); non-reentrant, so LoRA's frozen inputs need no
        requires_grad hook."""
        return {"use_cpu": self.device == "cpu", "bf16": self.bf16, "gradient_checkpointing": True,
                "gradient_checkpointing_kwargs": {"use_reentrant": False}}


def base_checkpoint(model_id: str) -> Path:
    """`local/...` model id (or a plain path) -> a checkpoint directory to train from."""
    from agentdistill.models.local import resolve_checkpoint

    return resolve_checkpoint(model_id.removeprefix("local/"))


def load_student(model_id: str, lora: LoraSpec | None, hw: Hardware, trainable: bool = True,
                 fresh_adapter: bool = False):
    """(model, tokenizer). A LoRA adapter directory continues training that adapter, or, with
    `fresh_adapter`, is merged into its base and a new adapter starts on top (then the adapter-disabled
    model is the starting policy, as a preference trainer's reference must be)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = base_checkpoint(model_id)
    dtype = torch.bfloat16 if hw.bf16 and hw.device == "cuda" else torch.float32  # CPU: fp32 weights, bf16 autocast
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if (path / "adapter_config.json").exists():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(path, dtype=dtype, is_trainable=trainable and not fresh_adapter)
        if fresh_adapter:
            model = model.merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    if lora is not None and trainable and not hasattr(model, "peft_config"):
        from peft import get_peft_model

        model = get_peft_model(model, lora.config())
    return model.to(hw.device), tok


def is_adapter(model_id: str) -> bool:
    return (base_checkpoint(model_id) / "adapter_config.json").exists()


def save_student(model, tokenizer, out: Path, merge: bool = False) -> Path:
    """Adapter (or full) weights + tokenizer at `out`, loadable as `local/<out>`; written atomically."""
    import shutil

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    if merge and hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)
    return out


def record_checkpoint(store: Store, path: Path, base_model: str, method: str, *, dataset_id: int | None = None,
                      run_id: str | None = None, config: dict[str, Any] | None = None,
                      metrics: dict[str, Any] | None = None) -> int:
    with store.session() as s, s.begin():
        row = Checkpoint(path=str(Path(path).resolve()), base_model=base_model, method=method, dataset_id=dataset_id,
                         run_id=run_id, config=config or {}, metrics=metrics or {})
        s.add(row)
        s.flush()
        return row.id


def spec_dict(obj) -> dict[str, Any]:
    return asdict(obj) if obj is not None else {}
