"""A request's greedy output must not depend on what it was batched with. Two things made it depend on
that (measured on SmolLM2, on CPU), and both are changed on a loaded model here:

1. Attention over padding. In a left-padded batch, SDPA attends over the batch's whole padded width
   through an explicit mask, while a prompt alone runs SDPA without a mask (the is_causal and
   grouped-query kernels). They round differently: in bf16 one prompt's last-token logits moved by up
   to 0.5 when it was padded. Here attention runs one row at a time, on the positions that row's mask
   allows, handed to SDPA exactly as a batch of one would hand them.
2. One-row matmuls. A linear layer on a single row (a lone request's decoding step) goes through
   another kernel (gemv) than on two or more rows, and the two round differently, in bf16 (1 bf16 ulp
   on a few of SmolLM2's activations) as in fp32. In bf16 every count of two or more rows rounds a row
   the same, so a single row of a bf16 (or fp16) layer is computed as two copies of itself. fp32 layers are
   left alone: there MKL's sgemm also rounds a row by its row count and its place in a tile, so two rows
   would not make it exact (a padded batch's logits differ from a lone prompt's by up to ~5e-5; no greedy
   text differed in a stress check of 66 outputs), and on an AVX2 CPU (AMD EPYC, no AVX-512) a two-row
   fp32 matmul took 1.65x as long as the one-row one, which reads the same weights.

Either difference alone flipped a near-tie token after ~10 greedy tokens ("I take" vs "I carefully").
The cost: one SDPA call per row and layer instead of one per layer (padded positions are skipped), and
a one-row bf16 linear costs about 7% more (measured on an AVX512-BF16 CPU).
"""

from __future__ import annotations

import threading
import types

NAME = "agentdistill_rowwise_sdpa"
_memo = threading.local()  # one forward's per-row cuts, shared by its layers (all get the same mask)


def _rows(mask, q_len: int):
    """Per row: the query and key positions it owns and the mask SDPA would get for it alone (None where
    transformers would skip it: one query, or a square causal pattern)."""
    import torch

    if getattr(_memo, "mask", None) is mask:
        return _memo.rows
    rows = []
    for row in mask[:, 0]:
        keys = row.any(0)  # a padded key is seen by no query
        queries = keys[-q_len:]  # the queries are the last q_len positions
        k_idx, q_idx = keys.nonzero()[:, 0], queries.nonzero()[:, 0]
        own = row[q_idx][:, k_idx]
        q, k = len(q_idx), len(k_idx)
        square_causal = q == k and torch.equal(own, torch.ones_like(own).tril())
        rows.append((_as_slice(q_idx), _as_slice(k_idx), None if q == 1 or square_causal else own[None, None]))
    _memo.mask, _memo.rows = mask, rows
    return rows


def _as_slice(idx):
    """Positions as a slice where they are one run (left padding only: a view, not a copy of the row's
    keys and values on every layer), None where there are none."""
    if not len(idx):
        return None
    first, last = int(idx[0]), int(idx[-1])
    return slice(first, last + 1) if last - first + 1 == len(idx) else idx


def rowwise_sdpa(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention, run per batch row on that row's unpadded positions."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if attention_mask is None or attention_mask.dtype != torch.bool:  # no padding: what each row gets alone
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    batch, heads, q_len, dim = query.shape
    if attention_mask.shape[0] != batch:  # one mask for every row
        attention_mask = attention_mask.expand(batch, *attention_mask.shape[1:])
    out = query.new_zeros((batch, q_len, heads, dim))
    for b, (q_idx, k_idx, mask) in enumerate(_rows(attention_mask, q_len)):
        if q_idx is None:  # an all-padding row
            continue
        row, _ = sdpa_attention_forward(module, query[b:b + 1, :, q_idx], key[b:b + 1, :, k_idx],
                                        value[b:b + 1, :, k_idx], mask, **kwargs)
        out[b, q_idx] = row[0]
    return out, None


def _two_row_linear(self, x):
    """nn.Linear's forward, with a single row computed as two (see 2. above)."""
    import torch.nn.functional as F

    if x.numel() != x.shape[-1]:
        return F.linear(x, self.weight, self.bias)
    pair = x.reshape(1, -1).expand(2, -1)
    return F.linear(pair, self.weight, self.bias)[:1].reshape(*x.shape[:-1], -1)


def make_batch_invariant(model) -> bool:
    """Change a loaded (inference-only) model as described above; returns False, changing nothing, for a
    model that does not run SDPA through transformers' attention interface."""
    import torch
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(NAME, rowwise_sdpa)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # the masks SDPA gets, cut per row above
    model.set_attn_implementation(NAME)
    if model.config._attn_implementation != NAME:
        return False
    for module in model.modules():
        if type(module) is torch.nn.Linear and module.weight.dtype in (torch.bfloat16, torch.float16):
            module.forward = types.MethodType(_two_row_linear, module)
    return True
