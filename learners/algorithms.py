"""Advantage estimators, loss aggregation and the policy loss, as pure tensor functions.

Shapes: B responses, R response tokens. `mask` is [B, R] with 1 on trained tokens.
The learner never sees the algorithm's name: the scheduler turns rewards into per-token
`advantages` and per-token `loss_weights` here, and the learner minimises
sum(loss_weights * per_token_loss).
"""
from __future__ import annotations

import torch

from core.registry import register

# --- advantage estimators: rewards [B] + group index [B] -> advantages [B] -----------------


def group_stats(rewards: torch.Tensor, group: torch.Tensor):
    """Per-sample mean and unbiased std (torch.std convention) of the sample's group."""
    n_groups = int(group.max()) + 1
    count = torch.zeros(n_groups).index_add_(0, group, torch.ones_like(rewards))
    mean = torch.zeros(n_groups).index_add_(0, group, rewards) / count
    sq = torch.zeros(n_groups).index_add_(0, group, (rewards - mean[group]) ** 2)
    std = (sq / (count - 1).clamp(min=1)).sqrt()
    return mean[group], std[group]


@register("advantage", "grpo")
def grpo_advantages(rewards: torch.Tensor, group: torch.Tensor, *, norm_by_std: bool = True,
                    eps: float = 1e-6) -> torch.Tensor:
    """GRPO (DeepSeekMath, arXiv:2402.03300): A_i = (r_i - mean_G) / (std_G + eps).

    `norm_by_std=False` gives Dr.GRPO's A_i = r_i - mean_G (arXiv:2503.20783).
    A group whose rewards are all equal gets zero advantage.
    """
    mean, std = group_stats(rewards, group)
    adv = rewards - mean
    return adv / (std + eps) if norm_by_std else adv


# --- loss aggregation: one helper owns every choice ----------------------------------------

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def aggregation_weights(mask: torch.Tensor, mode: str, max_len: int | None = None) -> torch.Tensor:
    """Per-token weights w with loss = sum(w * per_token_loss) over one mini-batch.

    token-mean:              sum_{i,t} l / sum_i |o_i|              (DAPO, Lite PPO)
    seq-mean-token-mean:     (1/N) sum_i (1/|o_i|) sum_t l          (GRPO)
    seq-mean-token-sum-norm: (1/N) sum_i sum_t l / L_max            (Dr.GRPO)
    Computed once for the whole mini-batch, so splitting it over ranks and micro-batches
    (and summing) gives the same loss as one big batch.
    """
    mask = mask.float()
    n_seq = max(int((mask.sum(1) > 0).sum()), 1)
    if mode == "token-mean":
        return mask / mask.sum().clamp(min=1)
    if mode == "seq-mean-token-mean":
        return mask / mask.sum(1, keepdim=True).clamp(min=1) / n_seq
    if mode == "seq-mean-token-sum-norm":
        if not max_len:
            raise ValueError("seq-mean-token-sum-norm needs max_len (the generation limit L_max)")
        return mask / (max_len * n_seq)
    raise ValueError(f"unknown loss aggregation {mode!r}; choose one of {AGGREGATIONS}")


# --- per-token losses ----------------------------------------------------------------------


def clipped_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor,
                        advantages: torch.Tensor, clip_low: float, clip_high: float):
    """PPO clipped surrogate per token: -min(rho A, clip(rho, 1-eps_low, 1+eps_high) A).

    Returns (loss [B, R], clipped [B, R] bool: tokens where the clipped branch was taken).
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high) * advantages
    loss = -torch.minimum(unclipped, clipped)
    return loss, clipped < unclipped


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman's k1/k2/k3)."""
    log_ratio = logprobs - ref_logprobs
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio ** 2
    if kind == "k3":
        return torch.exp(-log_ratio) + log_ratio - 1
    raise ValueError(f"unknown KL estimator {kind!r}; choose k1, k2 or k3")


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits.float(), -1)
    return -(logp.exp() * logp).sum(-1)
