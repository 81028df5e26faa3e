"""Cost ledger: what each call cost, from litellm's price map for API models, or from prices the
user configures (any model id, local ones included, e.g. to charge GPU time per token)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Price:
    input_per_mtok: float = 0.0  # USD per 1M prompt tokens
    output_per_mtok: float = 0.0  # USD per 1M completion tokens

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) / 1e6


def litellm_price(model_id: str) -> Price | None:
    """litellm's own price for a model id, or None when it does not know the model."""
    import litellm

    litellm.suppress_debug_info = True  # else it prints a provider list on every unknown id
    try:
        info = litellm.get_model_info(model_id)
    except Exception:  # litellm raises a bare Exception for unmapped models
        return None
    return Price(
        (info.get("input_cost_per_token") or 0.0) * 1e6, (info.get("output_cost_per_token") or 0.0) * 1e6
    )


def resolve_price(model_id: str, configured: Price | None) -> Price:
    if configured is not None:
        return configured
    from agentdistill.models.base import IN_PROCESS

    if not model_id.startswith(IN_PROCESS):  # in-process models: free unless priced
        price = litellm_price(model_id)
        if price is not None:
            return price
        log.info("no price known for %s: costs are recorded as 0 (set a price in the recipe)", model_id)
    return Price()
