"""Model ids -> ChatModel instances: litellm ids for APIs and servers, `local/...` for transformers,
`llamacpp/...` for GGUF files run by llama.cpp in process, `vllm/...` for vLLM on a CUDA GPU."""

from __future__ import annotations

import os
from typing import Any

from agentdistill.errors import ConfigError
from agentdistill.models.base import IN_PROCESS, ChatModel

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

_instances: dict[tuple[str, str], ChatModel] = {}


def check_model_id(model_id: str, api_base: str | None = None) -> None:
    """Raise a one-line ConfigError for ids no backend understands (before any run starts)."""
    if not model_id or model_id.strip() != model_id:
        raise ConfigError(f"bad model id {model_id!r}: use e.g. openai/gpt-4.1-mini or local/smollm2-135m")
    if model_id.startswith("local/"):
        from agentdistill.models.local import check_local

        check_local(model_id.removeprefix("local/"))
        return
    if model_id.startswith("llamacpp/"):
        from agentdistill.models.llamacpp import check_llamacpp

        check_llamacpp(model_id.removeprefix("llamacpp/"))
        return
    if model_id.startswith("vllm/"):
        from agentdistill.models.vllm_backend import check_vllm

        check_vllm(model_id.removeprefix("vllm/"))
        return
    import litellm

    litellm.suppress_debug_info = True  # else it prints a provider list on every unknown id

    try:
        name, provider, _, _ = litellm.get_llm_provider(model_id, api_base=api_base)
    except Exception:
        raise ConfigError(
            f"unknown model id {model_id!r}: use <provider>/<model> as litellm names it "
            "(openai/gpt-4.1-mini, anthropic/claude-sonnet-4-5, openai/<name> with api_base for an "
            "OpenAI-compatible server) or local/<name-or-path>"
        ) from None
    if not name.strip():
        raise ConfigError(f"model id {model_id!r} names no model: write {provider}/<model>, e.g. openai/gpt-4.1-mini")


def check_credentials(model_id: str, api_base: str | None = None, api_key_env: str | None = None) -> None:
    """Missing credentials are a configuration error, reported before a run starts (not an API error
    retried for a minute). A server given by api_base may need no key."""
    if model_id.startswith(IN_PROCESS):
        return
    if api_key_env:
        if not os.environ.get(api_key_env, "").strip():
            raise ConfigError(f"model {model_id}: api_key_env names {api_key_env}, which is not set: export it")
        return
    if api_base:
        return
    import litellm

    try:
        env = litellm.validate_environment(model_id)
    except Exception:  # litellm cannot tell for this provider: let the first request say
        return
    # litellm counts a variable that is set but empty (`OPENAI_API_KEY=`) as a key: we do not
    empty = [k for k in env.get("checked_keys") or _provider_keys(model_id) if not os.environ.get(k, "x").strip()]
    if not env.get("keys_in_environment", True) or empty:
        keys = " or ".join(env.get("missing_keys") or empty or ["its API key"])
        raise ConfigError(f"model {model_id} needs credentials: set {keys} in the environment (or name another "
                          "variable with api_key_env, or give api_base for your own server)")


def make_model(model_id: str, **options: Any) -> ChatModel:
    """Build (or reuse) the backend for a model id; options go to the backend's constructor."""
    check_model_id(model_id, options.get("api_base"))
    key = (model_id, repr(sorted(options.items())))
    if key not in _instances:
        if model_id.startswith("local/"):
            from agentdistill.models.local import LocalModel

            _instances[key] = LocalModel(model_id, **options)
        elif model_id.startswith("llamacpp/"):
            from agentdistill.models.llamacpp import LlamaCppModel

            _instances[key] = LlamaCppModel(model_id, **options)
        elif model_id.startswith("vllm/"):
            from agentdistill.models.vllm_backend import VLLMModel

            _instances[key] = VLLMModel(model_id, **options)
        else:
            from agentdistill.models.litellm_backend import LiteLLMModel

            _instances[key] = LiteLLMModel(model_id, **options)
    return _instances[key]


def release_in_process_models() -> None:
    """Forget the in-process models built so far, so their weights can go: a pipeline calls this after
    each stage (each eval arm loads its own checkpoint; kept for the process's life, a full efficacy
    recipe grew one process past 17 GB). A later make_model loads again."""
    import gc
    import sys

    for key in [k for k in _instances if k[0].startswith(IN_PROCESS)]:
        del _instances[key]
    local = sys.modules.get("agentdistill.models.local")
    if local is not None:
        local._Loaded.release_all()
    gc.collect()


def _provider_keys(model_id: str) -> list[str]:
    """The usual key variables of a litellm provider (`openai/...` -> OPENAI_API_KEY): set but empty counts
    as missing."""
    provider = model_id.split("/", 1)[0].upper().replace("-", "_")
    return [f"{provider}_API_KEY"]
