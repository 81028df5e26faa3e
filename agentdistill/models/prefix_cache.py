"""Reuse of a long system prompt's KV cache across calls of an in-process model.

A student that carries a skill pack or long instructions sends the same ~3k-token system prompt at
every step of every episode; on a CPU its prefill is most of the call (SmolLM2-135M: ~25 s a step on
2 cores). Like vLLM's automatic prefix caching, the key/value tensors of that prefix are computed once
and reused: a call only prefills its own suffix (goal, history, observation).

Only weights that do not change are cached (a trainer's live student is not: every optimizer step
would make its entries stale).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any


class PrefixCache:
    """The KV caches of the last `max_entries` prefixes of at least `min_tokens` tokens (LRU)."""

    def __init__(self, max_entries: int = 4, min_tokens: int = 512):
        self.max_entries, self.min_tokens = max_entries, min_tokens
        self._entries: OrderedDict[tuple[int, ...], Any] = OrderedDict()

    def usable(self, prefix: list[int] | None) -> bool:
        return prefix is not None and len(prefix) >= self.min_tokens

    def get(self, model, prefix: list[int], rows: int) -> tuple[Any, bool]:
        """A fresh cache holding `prefix` for `rows` sequences (generate extends it in place, so the
        stored entry is copied), and whether it was a hit. Call under the model's generation lock."""
        import torch

        key = tuple(prefix)
        hit = key in self._entries
        if hit:
            self._entries.move_to_end(key)
        else:
            with torch.inference_mode():  # logits of the last position only: not [L, vocab] for nothing
                out = model(input_ids=torch.tensor([prefix], device=model.device), use_cache=True, logits_to_keep=1)
            self._entries[key] = out.past_key_values
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        cache = copy.deepcopy(self._entries[key])
        if rows > 1:
            cache.batch_repeat_interleave(rows)
        return cache, hit


def supports(model) -> bool:
    """Whether a prefix's cache can be reused with padding between prefix and suffix: full attention in
    every layer and the default dynamic cache. Sliding windows count padding as window slots, recurrent
    layers carry state through it, and a configured static cache refuses a given one."""
    config = model.config
    if getattr(getattr(model, "generation_config", None), "cache_implementation", None):
        return False
    types = getattr(config, "layer_types", None)
    if types and any(t != "full_attention" for t in types):
        return False
    return not (getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True))


def shared_system_prefix(tokenizer, requests, prompts: list[list[int]]) -> list[int] | None:
    """The tokens of the system message every request of a batch starts with, or None when they differ
    (or the chat template does not render the system turn as a token prefix of the whole prompt)."""
    first = requests[0].messages
    if not first or first[0].get("role") != "system":
        return None
    if any(r.messages[:1] != first[:1] for r in requests[1:]):
        return None
    prefix = tokenizer.apply_chat_template(first[:1], tokenize=True, return_dict=False)
    prefix = list(prefix["input_ids"] if isinstance(prefix, dict) else prefix)
    # at least one token of every prompt is left to prefill (the generation needs its last position)
    if all(len(p) > len(prefix) and p[: len(prefix)] == prefix for p in prompts):
        return prefix
    return None
