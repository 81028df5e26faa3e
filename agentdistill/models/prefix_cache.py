"""Reuse of earlier prompts' KV caches by an in-process model (automatic prefix caching).

An agent's prompts repeat themselves: every call of every episode starts with the same system prompt
(instructions, a skill pack), and an episode's next prompt is its last one plus an action and an
observation until the history window starts to slide. On a CPU, prefill is most of a call and is
compute-bound, so batching cannot hide it. Like vLLM's automatic prefix caching, the key/value tensors
of recent prompts are kept, and a new prompt prefills only what follows its longest common token prefix
with any of them; the rows of a batch each reuse their own prefix.

Entries are only valid for the weights that computed them: a trainer's live student keeps them only
while a version it is given (its count of optimizer steps) stays the same.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

Layers = list[tuple[Any, Any]]  # per layer: keys and values, [kv_heads, tokens, head_dim]


def _nbytes(layers: Layers) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in layers)


def common_prefix(a: tuple[int, ...], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixCache:
    """The KV tensors of recent prompts, least recently used dropped first beyond `max_bytes`.

    A prompt that extends a kept one replaces it (it covers every prefix the old one could serve), so
    each running episode holds about one entry. A match shorter than `min_tokens` is not worth the
    padding it adds to a batch and is ignored."""

    def __init__(self, max_bytes: int = 512 << 20, min_tokens: int = 16):
        self.max_bytes, self.min_tokens = max_bytes, min_tokens
        self._entries: OrderedDict[tuple[int, ...], Layers] = OrderedDict()
        self._bytes = 0
        self._version: Any = None

    def keep_only(self, version: Any) -> None:
        """Forget every entry unless the weights' version is the one the entries were computed with."""
        if version != self._version:
            self._entries.clear()
            self._bytes, self._version = 0, version

    def match(self, prompt: list[int]) -> tuple[Layers | None, int]:
        """The kept entry sharing the longest token prefix with `prompt`, and how many tokens it serves
        (at least one token of the prompt is always left to prefill: generation needs its last position)."""
        best, length = None, 0
        for key in self._entries:
            n = min(common_prefix(key, prompt), len(prompt) - 1)
            if n > length:
                best, length = key, n
        if best is None or length < self.min_tokens:
            return None, 0
        self._entries.move_to_end(best)
        return self._entries[best], length

    def store(self, prompt: list[int], layers: Layers) -> None:
        """Keep the KV of a whole prompt (tensors of their own, not views of a batch's cache)."""
        key = tuple(prompt)
        size = _nbytes(layers)
        if size > self.max_bytes:  # never kept: the shorter prompts it extends stay useful
            return
        for old in [k for k in self._entries if len(k) <= len(key) and key[: len(k)] == k]:
            self._forget(old)
        self._entries[key] = layers
        self._bytes += size
        while self._bytes > self.max_bytes:
            self._forget(next(iter(self._entries)))

    def _forget(self, key: tuple[int, ...]) -> None:
        self._bytes -= _nbytes(self._entries.pop(key))

    def __len__(self) -> int:
        return len(self._entries)


def supports(model) -> bool:
    """Whether a prefix's cache can be reused with padding around it: full attention in every layer and
    the default dynamic cache. Sliding windows count padding as window slots, recurrent layers carry
    state through it, and a configured static cache refuses a given one."""
    config = model.config
    if getattr(getattr(model, "generation_config", None), "cache_implementation", None):
        return False
    types = getattr(config, "layer_types", None)
    if types and any(t != "full_attention" for t in types):
        return False
    return not (getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True))
