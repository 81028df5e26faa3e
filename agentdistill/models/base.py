"""The ChatModel seam: `complete(messages, n, temperature, max_tokens, stop) -> list[Completion]`."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": str}
IN_PROCESS = ("local/", "llamacpp/", "vllm/")  # model id prefixes answered in this process: no server, no key


@dataclass
class Completion:
    """One sample. `prompt_tokens` and `latency` belong to the call and repeat on each of its samples;
    `completion_tokens` and `cost` are this sample's own share, so costs add up across samples."""

    text: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    latency: float = 0.0
    finish_reason: str | None = None
    cached_prompt_tokens: int | None = None  # prompt tokens the provider served from its cache; None: not reported

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def chat_prompt_ids(tokenizer, messages: list[Message]) -> list[int]:
    """The token ids an in-process model is prompted with for a chat: its template with the generation prompt.
    The one place this is done, so a trainer scoring a rollout's turns sees exactly the rollout's prompt tokens."""
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    return list(prompt["input_ids"] if isinstance(prompt, dict) else prompt)


def call_record(
    model: str, messages: list[Message], params: dict[str, Any], completions: list[Completion]
) -> dict[str, Any]:
    """The ModelCall row for one request (see store.models.ModelCall). A provider's cached prompt count
    goes into the params (report.efficiency reads it there), only when reported."""
    cached = completions[0].cached_prompt_tokens if completions else None
    return {
        "model": model,
        "messages": messages,
        "params": params if cached is None else {**params, "cached_prompt_tokens": cached},
        "outputs": [c.text for c in completions],
        "prompt_tokens": completions[0].prompt_tokens if completions else 0,
        "completion_tokens": sum(c.completion_tokens for c in completions),
        "cost": sum(c.cost for c in completions),
        "latency": completions[0].latency if completions else 0.0,
    }


def fill_samples(completions: list[Completion], n: int, price, latency: float | None = None) -> list[Completion]:
    """A call's samples, finished: greedy ones decoded once are repeated up to n (their output tokens
    counted once), the prompt's cost shared across the samples and each sample's own output added."""
    head = completions[0]
    while len(completions) < n:
        completions.append(Completion(head.text, head.model, head.prompt_tokens, 0, 0.0, head.latency,
                                      head.finish_reason, head.cached_prompt_tokens))
    share = price.cost(head.prompt_tokens, 0) / len(completions)
    for c in completions:
        c.cost = share + price.cost(0, c.completion_tokens)
        if latency is not None:
            c.latency = latency
    return completions


class ChatModel(ABC):
    id: str

    @abstractmethod
    def complete(
        self,
        messages: list[Message],
        n: int = 1,
        temperature: float = 0.0,
        max_tokens: int = 256,
        stop: list[str] | None = None,
    ) -> list[Completion]: ...

    async def acomplete(
        self,
        messages: list[Message],
        n: int = 1,
        temperature: float = 0.0,
        max_tokens: int = 256,
        stop: list[str] | None = None,
    ) -> list[Completion]:
        """Default: run the blocking call in a worker thread so the event loop keeps going."""
        return await asyncio.to_thread(self.complete, messages, n, temperature, max_tokens, stop)
