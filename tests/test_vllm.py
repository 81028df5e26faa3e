"""vLLM in process (`vllm/...`). The GPU tests run only where vLLM and a CUDA GPU are present (never in CI
here: no GPU); the one-line refusals run everywhere."""

from __future__ import annotations

import importlib.util

import pytest

from agentdistill.errors import ConfigError
from agentdistill.models.registry import check_model_id
from tests.conftest import run_cli


def _gpu() -> bool:
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


needs_gpu = pytest.mark.skipif(not _gpu(), reason="needs vLLM and a CUDA GPU (pip install 'agentdistill[vllm]')")


@pytest.mark.skipif(_gpu(), reason="vLLM and a GPU are here")
def test_without_vllm_or_a_gpu_a_vllm_id_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="vLLM"):
        check_model_id("vllm/smollm2-135m")
    recipe = tmp_path / "r.toml"
    recipe.write_text('[student]\nmodel = "vllm/smollm2-135m"\n')
    p = run_cli("run", str(recipe), "--db", str(tmp_path / "s.db"))
    assert p.returncode == 2 and "vLLM" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert not (tmp_path / "s.db").exists()


def test_an_unknown_vllm_id_is_one_line():
    with pytest.raises(ConfigError, match="unknown local model"):
        check_model_id("vllm/no-such-model")


@pytest.mark.gpu
@needs_gpu
def test_vllm_greedy_matches_itself_batched_samples_differ_and_a_scienceworld_episode_is_stored(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from agentdistill.agents.rollout import run_recipe
    from agentdistill.config import parse_recipe
    from agentdistill.models.registry import make_model
    from agentdistill.store.store import Store

    model = make_model("vllm/smollm2-135m")
    chats = [[{"role": "user", "content": f"Name a colour number {i}."}] for i in range(6)]
    alone = [model.complete(c, max_tokens=12)[0] for c in chats]
    with ThreadPoolExecutor(6) as pool:
        together = [r[0] for r in pool.map(lambda c: model.complete(c, max_tokens=12), chats)]
    # vLLM does not promise bit-identical greedy decoding across batch sizes: most answers must agree
    assert sum(a.text == t.text for a, t in zip(alone, together)) >= 4
    assert all(0 < t.completion_tokens <= 12 and t.prompt_tokens > 0 for t in together)
    samples = model.complete(chats[0], n=4, temperature=1.0, max_tokens=16)
    assert len(samples) == 4 and len({s.text for s in samples}) > 1
    store = Store.open(str(tmp_path / "s.db"))
    recipe = parse_recipe({"env": {"tasks": ["lifespan-longest-lived"], "variations": 1},
                           "student": {"model": "vllm/smollm2-135m", "max_tokens": 24}, "runner": {"max_steps": 3}})
    (ep,) = store.episodes(run_id=run_recipe(store, recipe, progress=False), with_steps=True)
    assert ep.status == "done" and ep.n_steps == 3 and all(s.calls[0].model == "vllm/smollm2-135m" for s in ep.steps)


@pytest.mark.gpu
@needs_gpu
def test_vllm_serves_a_lora_adapter_without_merging(tmp_path):
    from agentdistill.models.registry import make_model

    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from agentdistill.models.local import resolve_checkpoint

    base = resolve_checkpoint("smollm2-135m")
    import torch

    torch.manual_seed(0)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                                LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    tuned, plain = make_model(f"vllm/{tmp_path / 'adapter'}"), make_model("vllm/smollm2-135m")
    assert tuned.lora is not None and str(tuned.base) == str(base) and tuned.engine is plain.engine  # one engine
    chats = [[{"role": "user", "content": f"Say something about the number {i}."}] for i in range(3)]
    answers = [(tuned.complete(c, max_tokens=12)[0].text, plain.complete(c, max_tokens=12)[0].text) for c in chats]
    assert any(a != b for a, b in answers)  # the adapter is applied, not ignored
    # and it answers as the merged adapter does in transformers
    local = make_model(f"local/{tmp_path / 'adapter'}", dtype="float32", batching=False)
    assert sum(local.complete(c, max_tokens=12)[0].text == a for c, (a, _) in zip(chats, answers)) >= 2


@pytest.mark.skipif(_gpu(), reason="vLLM and a GPU are here")
def test_opd_rollouts_on_vllm_without_a_gpu_are_one_line(tmp_path):
    p = run_cli("train", "opd", str(tmp_path / "ck"), "--context", "demo", "--rollout-backend", "vllm",
                "--db", str(tmp_path / "s.db"))
    assert p.returncode == 2 and "vLLM" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    p = run_cli("train", "opd", str(tmp_path / "ck"), "--context", "demo", "--rollout-backend", "sglang",
                "--db", str(tmp_path / "s.db"))
    assert p.returncode == 2 and "unknown rollout backend" in p.stderr, p.stderr
    assert not (tmp_path / "s.db").exists()


@pytest.mark.gpu
@needs_gpu
def test_opd_rollouts_run_on_vllm_with_the_live_adapter(tmp_path):
    """Two OPD iterations with vLLM rollouts on ScienceWorld: each iteration serves the adapter as trained
    so far (its own directory), the student's steps carry the loss, and the checkpoint is recorded."""
    from agentdistill.store.store import Store
    from agentdistill.train.curriculum import Curriculum
    from agentdistill.train.opd import OPDSpec, train_opd

    store = Store.open(str(tmp_path / "s.db"))
    from agentdistill.agents.rollout import run_recipe
    from agentdistill.config import parse_recipe

    run_recipe(store, parse_recipe({"env": {"tasks": ["lifespan-longest-lived"], "split": "train", "variations": 2},
                                    "teacher": {"policy": "expert"}}), progress=False)
    spec = OPDSpec(context="demo", curriculum=Curriculum("f2b", 1, 1, None), tasks=["lifespan-longest-lived"],
                   variations=2, iterations=2, episodes_per_iteration=2, max_steps=3, history=1, max_tokens=16,
                   rollout_backend="vllm")
    result = train_opd(store, spec, tmp_path / "ck")
    assert [(tmp_path / "ck.rollouts" / f"iteration-{n}" / "adapter_config.json").exists() for n in (0, 1)] == [True, True]
    assert len(result.iterations) == 2 and all(it["student_turns"] > 0 for it in result.iterations)
    assert any(it["tokens"] for it in result.iterations)
