"""Every API provider (openai/, anthropic/, ...) and any OpenAI-compatible server (api_base), via litellm."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import time
from typing import Any

from agentdistill.errors import ModelError
from agentdistill.models.base import ChatModel, Completion, Message
from agentdistill.models.cost import Price, resolve_price
from agentdistill.secrets import redact, register_env

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network fetch at import
log = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 529}
# litellm reports a key that was never given as a 500 ("Missing credentials"): asking again cannot help
_NO_CREDENTIALS = re.compile(r"missing credentials|api_key client option must be set|no api key|incorrect api key|"
                             r"invalid (x-)?api[-_ ]key", re.I)


def is_retryable(exc: BaseException) -> bool:
    import litellm

    if _NO_CREDENTIALS.search(str(exc)):
        return False

    transient = (
        litellm.exceptions.RateLimitError,
        litellm.exceptions.Timeout,
        litellm.exceptions.APIConnectionError,
        litellm.exceptions.InternalServerError,
        litellm.exceptions.ServiceUnavailableError,
    )
    if isinstance(exc, transient) or isinstance(exc, EmptyResponse):
        return True
    return getattr(exc, "status_code", None) in RETRYABLE_STATUS


class LiteLLMModel(ChatModel):
    def __init__(
        self,
        model_id: str,
        api_base: str | None = None,
        api_key_env: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 6,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        price: Price | None = None,
        extra: dict[str, Any] | None = None,
    ):
        import litellm

        litellm.suppress_debug_info = True
        litellm.drop_params = True  # providers that reject a parameter (e.g. n) get it dropped; we top up
        self.id = model_id
        self.api_base = api_base
        self.api_key_env = api_key_env
        register_env(api_key_env)  # whatever the variable's name, its value is a secret from now on
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.price = resolve_price(model_id, price)
        self.extra = extra or {}

    def _kwargs(self, messages, n, temperature, max_tokens, stop) -> dict[str, Any]:
        kw: dict[str, Any] = dict(
            model=self.id,
            messages=messages,
            n=n,
            temperature=temperature,
            max_tokens=max_tokens,
            timeout=self.timeout,
            num_retries=0,  # retries are ours, so that backoff is uniform and visible
            **self.extra,
        )
        if stop:
            kw["stop"] = stop
        if self.api_base:
            kw["api_base"] = self.api_base
            kw.setdefault("api_key", "none")  # OpenAI-compatible servers often need no key
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise ModelError(f"model {self.id}: environment variable {self.api_key_env} is not set")
            kw["api_key"] = key
        return kw

    def _parse(self, resp: Any, latency: float, max_tokens: int = 256) -> list[Completion]:
        usage = getattr(resp, "usage", None)
        prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_total = int(getattr(usage, "completion_tokens", 0) or 0)
        details = getattr(usage, "prompt_tokens_details", None)  # OpenAI-style prompt cache accounting
        cached = getattr(details, "cached_tokens", None) if details is not None else None
        cached = int(cached) if isinstance(cached, (int, float)) and not isinstance(cached, bool) and cached >= 0 else None
        choices = resp.choices
        per = completion_total // max(len(choices), 1)
        # the prompt is paid once per call: spread its cost evenly over the samples
        prompt_share = self.price.cost(prompt, 0) / max(len(choices), 1)
        # a server that ignores max_tokens (a 1 MB answer to a 64-token request) is cut where it should have
        # stopped: ~16 characters a token is generous for any tokenizer
        limit = max(4096, 16 * max_tokens)
        return [
            Completion(
                text=(c.message.content or "")[:limit],
                model=self.id,
                prompt_tokens=prompt,
                completion_tokens=per,
                cost=prompt_share + self.price.cost(0, per),
                latency=latency,
                finish_reason="length" if len(c.message.content or "") > limit else getattr(c, "finish_reason", None),
                cached_prompt_tokens=cached,
            )
            for c in choices
        ]

    def _delay(self, attempt: int, exc: Exception | None = None) -> float:
        """Exponential backoff with jitter; a server's Retry-After (seconds or an HTTP date) wins, bounded
        by backoff_max so a hostile or confused server cannot park the run."""
        after = _retry_after(exc) if exc is not None else None
        if after is not None:
            return min(self.backoff_max, max(0.0, after))
        return min(self.backoff_max, self.backoff_base * 2**attempt) * (0.5 + random.random() / 2)

    def _backoff_or_raise(self, exc: Exception, attempt: int) -> float:
        """Seconds to wait before the next attempt; a ModelError when retrying cannot help."""
        if attempt == self.max_retries or not is_retryable(exc):
            status = getattr(exc, "status_code", None)
            what = f"HTTP {status}" if status else type(exc).__name__
            raise ModelError(redact(f"model {self.id} failed after {attempt + 1} attempt(s) ({what}): {exc}")) from None
        log.warning("model %s: %s, retrying", self.id, type(exc).__name__)
        return self._delay(attempt, exc)

    def _usable(self, resp: Any, latency: float, max_tokens: int = 256) -> list[Completion]:
        """The response's completions; a response without any (no choices, no message) is a failed
        attempt like a 5xx, or the caller would ask again and again without backing off."""
        choices = getattr(resp, "choices", None) or []
        if not choices or all(getattr(c, "message", None) is None for c in choices):
            raise EmptyResponse(f"the server answered without a completion ({len(choices)} choices)")
        return self._parse(resp, latency, max_tokens)

    def complete(self, messages: list[Message], n=1, temperature=0.0, max_tokens=256, stop=None):
        import litellm

        out: list[Completion] = []
        attempt = 0
        while len(out) < n:  # servers that ignore n return fewer choices: ask again for the rest
            t0 = time.perf_counter()
            try:
                resp = litellm.completion(**self._kwargs(messages, n - len(out), temperature, max_tokens, stop))
                out += self._usable(resp, time.perf_counter() - t0, max_tokens)
            except ModelError:
                raise
            except Exception as e:
                time.sleep(self._backoff_or_raise(e, attempt))
                attempt += 1
        return out[:n]

    async def acomplete(self, messages: list[Message], n=1, temperature=0.0, max_tokens=256, stop=None):
        import litellm

        out: list[Completion] = []
        attempt = 0
        while len(out) < n:
            t0 = time.perf_counter()
            try:
                resp = await litellm.acompletion(**self._kwargs(messages, n - len(out), temperature, max_tokens, stop))
                out += self._usable(resp, time.perf_counter() - t0, max_tokens)
            except ModelError:
                raise
            except Exception as e:
                await asyncio.sleep(self._backoff_or_raise(e, attempt))
                attempt += 1
        return out[:n]


class EmptyResponse(Exception):
    """A 200 answer without a usable completion: retried like a server error."""


def _retry_after(exc: Exception) -> float | None:
    """Seconds from a Retry-After header on the failed response, if any."""
    value = None
    # litellm keeps the provider's headers on the exception; its `response` is a synthetic one
    for headers in (getattr(exc, "litellm_response_headers", None), getattr(getattr(exc, "response", None), "headers", None),
                    getattr(exc, "headers", None)):
        try:
            value = value or (headers.get("retry-after") if headers else None)
        except AttributeError:
            continue
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return (parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None
