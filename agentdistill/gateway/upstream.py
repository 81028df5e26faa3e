"""What answers the gateway's calls: an upstream model, reached through litellm for both APIs.

litellm does the work of a proxy here: `litellm.acompletion` speaks OpenAI's Chat Completions to any
provider (an Anthropic model included), and `litellm.anthropic.messages.acreate` speaks Anthropic's
Messages to any provider (natively to Anthropic, through litellm's own adapter to anyone else). Both stream.
What runs in this process (a `local/`, `llamacpp/` or `vllm/` student, or the cascade) is registered with
litellm as a custom provider, `agentdistill/<name>`, so it is reached the same way and both APIs work for it
too (text only: a small in-process model is not asked to call tools; a stream is its whole answer in one piece).

Transient failures (429, 5xx, a dropped connection, a timeout) are retried a few times before anything is
sent to the client; permanent ones (a refused key, an unknown model, a bad request) are not.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from contextvars import ContextVar
from typing import Any

from agentdistill.errors import ConfigError
from agentdistill.gateway.errors import GatewayError
from agentdistill.models.base import IN_PROCESS, ChatModel
from agentdistill.models.cost import Price, resolve_price
from agentdistill.secrets import register_env

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
log = logging.getLogger(__name__)

PROVIDER = "agentdistill"  # litellm's name for what runs in this process

# What the in-process answerer of the current call reports back (which model answered, its cost, the cascade's
# samples): litellm's translation to Anthropic's shape drops anything extra on the response itself.
CALL_INFO: ContextVar[dict[str, Any] | None] = ContextVar("agentdistill_call_info", default=None)

# The request fields passed on, per API: never the client's api_base, api_key, base_url or headers (it
# would point the gateway's credentials at a server of its choosing).
OPENAI_PARAMS = frozenset({
    "messages", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "max_tokens", "max_completion_tokens",
    "n", "presence_penalty", "response_format", "seed", "stop", "stream", "stream_options", "temperature", "top_p",
    "tools", "tool_choice", "parallel_tool_calls", "user", "reasoning_effort", "verbosity", "modalities", "prediction",
    "audio", "web_search_options", "prompt_cache_key", "safety_identifier", "service_tier", "functions",
    "function_call"})
ANTHROPIC_PARAMS = frozenset({
    "messages", "max_tokens", "metadata", "stop_sequences", "stream", "system", "temperature", "thinking",
    "tool_choice", "tools", "top_k", "top_p", "context_management", "output_config", "output_format",
    "service_tier"})


class Upstream:
    """One model answering every call. `model_id`: any litellm id (`openai/gpt-4.1-mini`,
    `anthropic/claude-sonnet-4-5`, `openai/<name>` + `api_base` for an OpenAI-compatible server), an in-process
    id (`local/...`, `llamacpp/...`), or an in-process answerer given as `answerer` (the cascade)."""

    def __init__(self, model_id: str, api_base: str | None = None, api_key_env: str | None = None,
                 retries: int = 2, timeout: float = 600.0, price: Price | None = None, answerer: Any = None):
        import litellm

        from agentdistill.models.registry import check_credentials, check_model_id

        litellm.suppress_debug_info = True
        litellm.drop_params = True  # a parameter the provider refuses is dropped, not a 400 to the client
        self.id, self.api_base, self.api_key_env = model_id, api_base, api_key_env
        self.retries, self.timeout = retries, timeout
        if answerer is None and model_id.startswith(IN_PROCESS):
            if api_base:
                raise ConfigError(f"--upstream-api-base: {model_id} runs in this process; drop the option or name "
                                  "the server's model as openai/<name>")
            from agentdistill.models import make_model

            answerer = ModelAnswerer(make_model(model_id))  # loads it now: a missing file fails at start
        self.in_process = answerer is not None
        if answerer is not None:
            self.litellm_model = f"{PROVIDER}/{_register(answerer)}"
            self.price = Price()  # the answerer reports its own cost
        else:
            check_model_id(model_id, api_base)
            check_credentials(model_id, api_base, api_key_env)  # a missing key fails here, not on every request
            register_env(api_key_env)
            self.litellm_model = model_id
            self.price = resolve_price(model_id, price)
            if api_base:
                # an OpenAI-compatible server seldom has OpenAI's Responses API, where litellm would otherwise send
                # Anthropic-shaped calls for openai/ models
                litellm.use_chat_completions_url_for_anthropic_messages = True

    def _kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"model": self.litellm_model, "num_retries": 0, "timeout": self.timeout}
        if self.api_base:
            kw["api_base"] = self.api_base
            kw["api_key"] = "none"  # OpenAI-compatible servers often need no key
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise ConfigError(f"upstream {self.id}: environment variable {self.api_key_env} is not set")
            kw["api_key"] = key
        return kw

    async def chat(self, params: dict[str, Any]):
        """OpenAI Chat Completions: a litellm ModelResponse, or its stream of chunks (`stream=True`)."""
        import litellm

        kw = {**{k: v for k, v in params.items() if k in OPENAI_PARAMS}, **self._kwargs()}
        if kw.get("stream") and self.in_process and (kw.get("n") or 1) > 1:  # litellm streams one choice from these
            raise GatewayError(400, f"n: {self.id} runs in this process and streams one answer: ask for n=1, or "
                                    "without stream", param="n")
        if kw.get("stream"):  # the usage comes last in the stream, for the record; the client gets it if it asked
            kw["stream_options"] = {**(kw.get("stream_options") or {}), "include_usage": True}
        return await self._call(litellm.acompletion, kw)

    async def messages(self, params: dict[str, Any]):
        """Anthropic Messages: the response as a dict, or its stream of server-sent-event bytes (`stream=True`)."""
        import litellm

        kw = {**{k: v for k, v in params.items() if k in ANTHROPIC_PARAMS}, **self._kwargs()}
        return await self._call(litellm.anthropic.messages.acreate, kw)

    async def _call(self, fn, kw: dict[str, Any]):
        from agentdistill.models.litellm_backend import _retry_after, is_retryable

        for attempt in range(self.retries + 1):
            try:
                return await fn(**kw)
            except Exception as e:
                if attempt == self.retries or not is_retryable(e):
                    raise
                after = _retry_after(e)
                delay = min(10.0, after if after is not None else 0.5 * 2**attempt * (0.5 + random.random() / 2))
                log.warning("upstream %s: %s, retrying in %.1f s", self.id, type(e).__name__, delay)
                await asyncio.sleep(delay)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return self.price.cost(prompt_tokens, completion_tokens)


# ---- what runs in this process, as a litellm provider ---------------------------------------------------------

def _text(content: Any) -> str:
    """A message's content as text: a string, or the text of its parts (an image is named, not described)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            if isinstance(p, dict):
                parts.append(p.get("text") if isinstance(p.get("text"), str) else f"[{p.get('type', 'part')}]")
            elif isinstance(p, str):
                parts.append(p)
        return "\n".join(parts)
    return str(content)


def flatten(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """A tool-using OpenAI conversation as the plain chat an in-process model takes: one system message first,
    tool calls written out in the assistant's turn, tool results as user turns."""
    system, out = [], []
    for m in messages:
        role, text = m.get("role"), _text(m.get("content"))
        if role in ("system", "developer"):
            system.append(text)
            continue
        if role == "assistant":
            calls = [f"{c.get('function', {}).get('name')}({c.get('function', {}).get('arguments', '')})"
                     for c in m.get("tool_calls") or []]
            text = "\n".join([t for t in (text, *calls) if t])
        elif role in ("tool", "function"):
            role, text = "user", f"[tool result]\n{text}"
        else:
            role = "user"
        out.append({"role": role, "content": text})
    return ([{"role": "system", "content": "\n\n".join(system)}] if system else []) + out


class ModelAnswerer:
    """A ChatModel (an in-process student) answering alone."""

    def __init__(self, model: ChatModel):
        self.model, self.id = model, model.id

    async def answer(self, messages, n, temperature, max_tokens, stop) -> tuple[list[tuple[str, str]], int, int, dict]:
        samples = await self.model.acomplete(flatten(messages), n=n, temperature=temperature, max_tokens=max_tokens,
                                             stop=stop)
        info = {"answered_by": self.model.id, "cost": sum(c.cost for c in samples)}
        return ([(c.text, c.finish_reason or "stop") for c in samples], samples[0].prompt_tokens,
                sum(c.completion_tokens for c in samples), info)


class CascadeAnswerer:
    """The cascade (serve.CascadeService): the student with retrieved demos, deferring to the teacher when its
    samples disagree."""

    def __init__(self, service):
        self.service = service
        self.id = f"cascade:{service.student.id}->{service.teacher.id}"

    async def answer(self, messages, n, temperature, max_tokens, stop):
        body = await self.service.answer(flatten(messages), max_tokens=max_tokens, stop=stop)
        extra = body["agentdistill"]
        choice = body["choices"][0]
        return ([(choice["message"]["content"], choice["finish_reason"])] * n, body["usage"]["prompt_tokens"],
                body["usage"]["completion_tokens"], {**extra, "answered_by": extra["answered_by"]})


_answerers: dict[str, Any] = {}


def _register(answerer) -> str:
    import litellm

    name = answerer.id  # what litellm reports as the model (a later gateway of the same id replaces it)
    _answerers[name] = answerer
    if not any(p.get("provider") == PROVIDER for p in litellm.custom_provider_map):
        litellm.custom_provider_map = [*litellm.custom_provider_map, {"provider": PROVIDER, "custom_handler": _handler()}]
    return name


def _handler():
    from litellm import CustomLLM

    class InProcess(CustomLLM):
        """litellm's custom provider `agentdistill/<name>`: the registered answerer of that name."""

        async def acompletion(self, model, messages, api_base, custom_prompt_dict, model_response, print_verbose,
                              encoding, api_key, logging_obj, optional_params, *args, **kwargs):
            import litellm
            from litellm.types.utils import Choices, Message

            answerer = _answerers[model]
            p = optional_params or {}
            stop = p.get("stop")
            t0 = time.perf_counter()
            outputs, prompt, completion, info = await answerer.answer(
                messages, int(p.get("n") or 1), float(p.get("temperature") if p.get("temperature") is not None else 0.0),
                int(p.get("max_completion_tokens") or p.get("max_tokens") or 512), [stop] if isinstance(stop, str) else stop)
            model_response.choices = [Choices(index=i, finish_reason=finish, message=Message(role="assistant", content=text))
                                      for i, (text, finish) in enumerate(outputs)]
            model_response.usage = litellm.Usage(prompt_tokens=prompt, completion_tokens=completion,
                                                 total_tokens=prompt + completion)
            model_response.model = info["answered_by"]
            found = CALL_INFO.get()
            if found is not None:
                found.update(info, latency=time.perf_counter() - t0)
            return model_response

        async def astreaming(self, model, messages, api_base, custom_prompt_dict, model_response, print_verbose,
                             encoding, api_key, logging_obj, optional_params, *args, **kwargs):
            done = await self.acompletion(model, messages, api_base, custom_prompt_dict, model_response, print_verbose,
                                          encoding, api_key, logging_obj, optional_params)
            usage = done.usage
            for i, choice in enumerate(done.choices):
                last = i == len(done.choices) - 1
                yield {"text": choice.message.content or "", "is_finished": last, "finish_reason": choice.finish_reason,
                       "index": i, "tool_use": None,
                       "usage": {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                                 "total_tokens": usage.total_tokens} if last else None}

    return InProcess()
