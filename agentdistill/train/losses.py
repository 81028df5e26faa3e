"""Token-level distillation losses on agent tokens.

Divergences over the full vocabulary reuse TRL's `GKDTrainer.generalized_jsd_loss` (beta=1 is the
reverse KL(student || teacher) of on-policy distillation, beta=0 the forward KL, in between the
generalized JSD). The Skill-SD objective on sampled tokens is ours (TRL has no such loss).
"""

from __future__ import annotations

import os

import torch

DIVERGENCE_BETA = {"reverse_kl": 1.0, "forward_kl": 0.0}


def divergence_per_token(student_logits: torch.Tensor, teacher_logits: torch.Tensor, divergence: str = "reverse_kl",
                         beta: float = 0.5) -> torch.Tensor:
    """(T, V) logits at the agent tokens -> (T,) divergence per token."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.gkd import GKDTrainer

    if divergence not in (*DIVERGENCE_BETA, "jsd"):
        raise ValueError(f"unknown divergence {divergence!r}: use reverse_kl, forward_kl or jsd")
    b = DIVERGENCE_BETA.get(divergence, beta)
    per_vocab = GKDTrainer.generalized_jsd_loss(student_logits[None], teacher_logits[None], beta=b, reduction="none")
    return per_vocab.sum(-1).reshape(-1)


def skill_sd_loss(logp_student: torch.Tensor, logp_teacher: torch.Tensor, logp_old: torch.Tensor,
                  advantages: torch.Tensor | None = None, lam: float = 1.0, grpo_weight: float = 0.0):
    """Skill-SD (arXiv 2604.10674) on sampled tokens, all (T,):

    l_t = log pi_student(a_t) - log pi_teacher(a_t | task + skill)      (teacher: no gradient)
    rho_t = pi_student(a_t) / stopgrad(pi_old(a_t))                     (pi_old: the policy that sampled)
    loss = lam * mean(rho_t * (exp(-l_t) - 1 + l_t))  [+ grpo_weight * -mean(rho_t * A_t)]

    exp(-l) - 1 + l is the k3 estimator of KL(student || teacher): >= 0, and 0 where they agree.
    Returns (loss, per-token k3 values detached)."""
    log_ratio = logp_student - logp_teacher.detach()
    rho = torch.exp(logp_student - logp_old.detach())
    k3 = torch.exp(-log_ratio) - 1 + log_ratio
    loss = lam * (rho * k3).mean()
    if grpo_weight and advantages is not None:
        loss = loss - grpo_weight * (rho * advantages).mean()
    return loss, k3.detach()
