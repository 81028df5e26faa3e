"""A trained student (a LoRA adapter directory, as `train sft` writes) exported to GGUF with llama.cpp's
own converter, then served by the llamacpp/ backend: the same greedy answers as the transformers
backend on the same weights."""

from __future__ import annotations

import pytest

from agentdistill.errors import ConfigError
from agentdistill.models.gguf_export import export_gguf
from agentdistill.models.local import resolve_checkpoint
from agentdistill.models.registry import make_model
from tests.conftest import run_cli

pytest.importorskip("llama_cpp", reason="pip install 'llama-cpp-python>=0.3'")
pytest.importorskip("peft")

CHATS = [[{"role": "system", "content": "You play a text game. Reply with one action."},
          {"role": "user", "content": f"You are in {room}. What do you do?"}]
         for room in ("a kitchen with a closed fridge", "a cellar with a lantern", "a garden with a shovel")]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A LoRA adapter that really changes the model (random B, not the identity init)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = resolve_checkpoint("smollm2-135m")
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                           LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    out = tmp_path_factory.mktemp("ckpt") / "adapter"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def test_an_exported_adapter_answers_as_the_transformers_backend_does(adapter, tmp_path):
    gguf = export_gguf(adapter, tmp_path / "student.gguf", "f32")
    assert gguf.stat().st_size > 100 << 20 and not list(tmp_path.glob("*.partial"))
    via_llamacpp = make_model(f"llamacpp/{gguf}")
    via_transformers = make_model(f"local/{adapter}", dtype="float32", batching=False)
    base = make_model("local/smollm2-135m", dtype="float32", batching=False)
    same = changed = 0
    for chat in CHATS:
        (a,), (b,), (c,) = (m.complete(chat, max_tokens=12) for m in (via_llamacpp, via_transformers, base))
        same += a.text == b.text
        changed += b.text != c.text
    assert changed >= 1  # the adapter is in the weights, not dropped on the way
    assert same >= 2, "the GGUF answers differently from the checkpoint it came from"


def test_bad_exports_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="not a checkpoint"):
        export_gguf(tmp_path, tmp_path / "x.gguf")
    p = run_cli("train", "gguf", str(tmp_path), "--out", str(tmp_path / "x.gguf"), "--outtype", "q2")
    assert p.returncode == 2 and "use one of" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
