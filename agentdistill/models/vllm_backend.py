"""vLLM in process on a CUDA GPU: `vllm/<alias | checkpoint dir | LoRA adapter dir>`.

Concurrent requests (episodes in flight) are gathered by the same Batcher as `local/` and handed to
vLLM in one `LLM.chat` call, where its continuous batching and prefix cache take over. A LoRA adapter
directory from `agentdistill train sft` is served on its base model without merging (vLLM's
LoRARequest), so several adapters of one base can share a GPU. Optional: `pip install
'agentdistill[vllm]'` on a machine with a CUDA GPU.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import threading
import time
from pathlib import Path

from agentdistill.errors import ConfigError, ModelError
from agentdistill.models.base import ChatModel, Completion, Message, fill_samples
from agentdistill.models.batching import Batcher, Request
from agentdistill.models.cost import Price, resolve_price

PREFIX = "vllm/"


def check_vllm(name_or_path: str) -> None:
    """One line when vLLM or a GPU is missing, or the id resolves to nothing (no loading)."""
    from agentdistill.models.local import check_local

    check_local(name_or_path)
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError(f"model {PREFIX}{name_or_path} needs vLLM and a CUDA GPU: pip install 'agentdistill[vllm]' "
                          f"there (on a CPU use local/{name_or_path} or llamacpp/...)")
    # asked through NVML, not the CUDA runtime: initializing CUDA here would break the engine process
    # vLLM forks next ("Cannot re-initialize CUDA in forked subprocess"); spawn is safe either way
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"model {PREFIX}{name_or_path}: vLLM needs a CUDA GPU and none is visible here "
                          f"(use local/{name_or_path} on a CPU)")


def split_adapter(path: Path) -> tuple[Path, Path | None]:
    """(base checkpoint, adapter dir or None) for a checkpoint or a PEFT adapter directory."""
    from agentdistill.models.local import resolve_checkpoint

    config = path / "adapter_config.json"
    if not config.exists():
        return path, None
    base = json.loads(config.read_text()).get("base_model_name_or_path")
    if not base:
        raise ConfigError(f"{config} names no base_model_name_or_path: cannot serve the adapter")
    return resolve_checkpoint(base), path


class _Engine:
    """One vLLM engine per base checkpoint in this process, shared by the base model and every adapter
    on it (each adapter its own LoRA id): a second engine would ask for GPU memory the first holds."""

    _cache: dict[str, _Engine] = {}
    _cache_lock = threading.Lock()
    _lora_ids = itertools.count(1)

    def __init__(self, base: Path, options: dict):
        from vllm import LLM

        self.llm = LLM(model=str(base), enable_lora=True, seed=0, **options)
        self.lock = threading.Lock()  # LLM.chat is not re-entrant
        self.loras: dict[str, object] = {}

    @classmethod
    def get(cls, base: Path, options: dict) -> _Engine:
        with cls._cache_lock:
            key = str(base.resolve())
            if key not in cls._cache:
                cls._cache[key] = cls(base, options)
            return cls._cache[key]

    def lora(self, adapter: Path):
        from vllm.lora.request import LoRARequest

        with self._cache_lock:
            key = str(adapter.resolve())
            if key not in self.loras:
                self.loras[key] = LoRARequest(adapter.name, next(self._lora_ids), key)
            return self.loras[key]


class VLLMModel(ChatModel):
    def __init__(self, model_id: str, top_p: float = 1.0, price: Price | None = None, max_batch: int = 64,
                 gpu_memory_utilization: float = 0.5, max_model_len: int = 4096, max_lora_rank: int = 64):
        """Engine options (`gpu_memory_utilization`, `max_model_len`, `max_lora_rank`) are the first
        model's on a base checkpoint: later ones share its engine."""
        from agentdistill.models.local import resolve_checkpoint

        name = model_id.removeprefix(PREFIX)
        check_vllm(name)
        self.id, self.top_p = model_id, top_p
        self.price = resolve_price(model_id, price)
        self.base, adapter = split_adapter(resolve_checkpoint(name))
        self.engine = _Engine.get(self.base, dict(gpu_memory_utilization=gpu_memory_utilization,
                                                  max_model_len=max_model_len, max_lora_rank=max_lora_rank))
        self.max_model_len = max_model_len
        self.lora = self.engine.lora(adapter) if adapter is not None else None
        self._batcher = Batcher(self._generate, max_batch=max_batch)

    def complete(self, messages: list[Message], n=1, temperature=0.0, max_tokens=256, stop=None) -> list[Completion]:
        result = self._batcher.submit(Request(messages, n, temperature, max_tokens, tuple(stop or ()), owner=self))
        if isinstance(result, Exception):
            raise result
        return result

    def _chat(self, requests: list[Request]) -> tuple[list, float]:
        from vllm import SamplingParams

        params = [SamplingParams(n=r.n if r.temperature > 0 else 1, temperature=r.temperature,
                                 top_p=self.top_p if r.temperature > 0 else 1.0, max_tokens=r.max_tokens,
                                 stop=list(r.stop) or None) for r in requests]
        with self.engine.lock:
            t0 = time.perf_counter()
            outputs = self.engine.llm.chat([r.messages for r in requests], params, use_tqdm=False,
                                           lora_request=self.lora)
            return outputs, time.perf_counter() - t0

    def _generate(self, requests: list[Request]) -> list:
        """One result per request: its completions, or the ModelError that is its own (a prompt longer
        than the context fails that request, not the batch it arrived with)."""
        try:
            outputs, latency = self._chat(requests)
        except ValueError as e:  # vLLM's refusal of a prompt (too long for max_model_len, ...)
            if len(requests) == 1:
                return [ModelError(f"{self.id}: {e} (max_model_len = {self.max_model_len})")]
            return [self._generate([r])[0] for r in requests]
        return [self._completions(r, out, latency) for r, out in zip(requests, outputs)]

    def _completions(self, r: Request, out, latency: float) -> list[Completion]:
        prompt = len(out.prompt_token_ids or [])
        comps = [Completion(o.text, self.id, prompt, len(o.token_ids), 0.0, latency, o.finish_reason)
                 for o in out.outputs]
        return fill_samples(comps, r.n, self.price)
