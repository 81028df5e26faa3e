"""The ChatModel seam: `complete(messages, n, temperature, max_tokens, stop) -> list[Completion]`."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": str}


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def call_record(
    model: str, messages: list[Message], params: dict[str, Any], completions: list[Completion]
) -> dict[str, Any]:
    """The ModelCall row for one request (see store.models.ModelCall)."""
    return {
        "model": model,
        "messages": messages,
        "params": params,
        "outputs": [c.text for c in completions],
        "prompt_tokens": completions[0].prompt_tokens if completions else 0,
        "completion_tokens": sum(c.completion_tokens for c in completions),
        "cost": sum(c.cost for c in completions),
        "latency": completions[0].latency if completions else 0.0,
    }


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
