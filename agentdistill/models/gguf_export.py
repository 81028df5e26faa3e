"""Trained checkpoints -> GGUF files, for `llamacpp/<file.gguf>` (or any llama.cpp server).

The converter is llama.cpp's own `convert_hf_to_gguf.py` at the version llama-cpp-python vendors:
it ships only in llama-cpp-python's source archive, so the first export fetches that archive from
PyPI once (`pip download`) and keeps the converter under the cache dir. A LoRA adapter directory is
merged into its base first (llama.cpp's separate LoRA GGUFs need the base GGUF beside them; one
merged file is simpler to serve).
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from agentdistill.errors import ConfigError
from agentdistill.paths import cache_dir

OUTTYPES = ("f32", "f16", "bf16", "q8_0")
_NEEDED = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


def converter() -> Path:
    """The directory holding convert_hf_to_gguf.py and its gguf-py, fetched once per llama-cpp-python version."""
    try:
        version = importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError("exporting GGUF uses llama.cpp's converter from llama-cpp-python: "
                          "pip install 'llama-cpp-python>=0.3'") from None
    home = cache_dir() / "llama.cpp" / version
    if (home / "COMPLETE").exists():
        return home
    home.parent.mkdir(parents=True, exist_ok=True)
    # staged beside its final place (same filesystem: the rename is atomic), marked complete last
    with tempfile.TemporaryDirectory(dir=home.parent) as tmp:
        p = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                            f"llama-cpp-python=={version}", "-d", tmp], capture_output=True, text=True)
        archives = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if p.returncode or not archives:
            last = (p.stderr.strip().splitlines() or ["no archive"])[-1]
            raise ConfigError(f"could not fetch llama-cpp-python {version}'s source for its GGUF converter ({last}): "
                              "check that PyPI is reachable")
        prefix = f"{archives[0].name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
        staging = Path(tmp) / "converter"
        with tarfile.open(archives[0]) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)
                       and any(m.name[len(prefix):].startswith(n) for n in _NEEDED) and (m.isfile() or m.isdir())]
            for m in members:
                m.name = m.name[len(prefix):]
            tar.extractall(staging, members=members, filter="data")
        (staging / "COMPLETE").write_text(version)
        try:
            staging.rename(home)
        except OSError:  # another process finished first: its copy is as good
            if not (home / "COMPLETE").exists():
                raise ConfigError(f"{home} exists but is incomplete: remove it and export again") from None
    return home


def export_gguf(checkpoint: Path, out: Path, outtype: str = "q8_0") -> Path:
    """Write `checkpoint` (an HF checkpoint or a PEFT adapter dir) as one GGUF file at `out`."""
    if outtype not in OUTTYPES:
        raise ConfigError(f"--outtype {outtype}: use one of {', '.join(OUTTYPES)}")
    if not (checkpoint / "config.json").exists() and not (checkpoint / "adapter_config.json").exists():
        raise ConfigError(f"{checkpoint} is not a checkpoint (no config.json or adapter_config.json)")
    if not out.parent.is_dir():
        raise ConfigError(f"{out.parent} does not exist: create it first")
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory: name the .gguf file to write")
    tool = converter()
    with tempfile.TemporaryDirectory() as tmp:
        source = checkpoint
        if (checkpoint / "adapter_config.json").exists():
            source = _merged(checkpoint, Path(tmp) / "merged")
        partial = out.with_name(out.name + ".partial")
        paths = [str(tool / "gguf-py"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}  # no empty entry: it would mean the cwd
        p = subprocess.run([sys.executable, str(tool / "convert_hf_to_gguf.py"), str(source), "--outfile",
                            str(partial), "--outtype", outtype], capture_output=True, text=True, env=env)
        if p.returncode:
            partial.unlink(missing_ok=True)
            last = (p.stderr.strip().splitlines() or ["no output"])[-1]
            raise ConfigError(f"llama.cpp's converter failed on {checkpoint}: {last}")
        partial.replace(out)
    return out


def _merged(adapter: Path, out: Path) -> Path:
    """The adapter merged into its base, saved as a plain checkpoint (tokenizer from the adapter's
    directory, else its base's)."""
    import json

    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    base = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    try:
        AutoPeftModelForCausalLM.from_pretrained(adapter).merge_and_unload().save_pretrained(out)
        tok_source = adapter if (adapter / "tokenizer_config.json").exists() else base
        AutoTokenizer.from_pretrained(tok_source).save_pretrained(out)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"cannot merge {adapter} into its base {base}: {first}") from None
    return out
