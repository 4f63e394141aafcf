"""Policy losses, loss aggregation and KL estimators, as pure tensor functions.

A policy loss is `fn(x: LossInputs, **options) -> (loss, stats)`, registered by name (kind
"loss") and chosen by `algorithm.loss`. `loss` is this micro-batch's share of the
mini-batch loss: per-token terms are multiplied by `x.weights` (see `aggregation_weights`)
and summed, so micro-batches and ranks add up to exactly the whole mini-batch's loss.
`stats` are per-token [b, r] (or per-response [b]) values to monitor; the learner reports
their mean over the trained tokens, whatever the loss aggregation.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from core.registry import register
from core.laser import laser_self_reward

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def aggregation_weights(mask: torch.Tensor, mode: str, max_len: int | None = None) -> torch.Tensor:
    """Per-token weights w with loss = sum(w * per_token_loss) over one mini-batch.

    token-mean:              sum_{i,t} l / sum_i |o_i|              (DAPO, Lite PPO)
    seq-mean-token-mean:     (1/N) sum_i (1/|o_i|) sum_t l          (GRPO)
    seq-mean-token-sum-norm: (1/N) sum_i sum_t l / L_max            (Dr.GRPO)
    Computed once for the whole mini-batch, so splitting it over ranks and micro-batches
    (and summing) gives the same loss as one big batch. The weights of one response sum to
    its share of a sequence-level loss (1/N in the seq-mean modes).
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


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman's k1/k2/k3).

    k3 = exp(-d) + d - 1 of d = log pi - log pi_ref is bounded as verl's low_var_kl bounds it:
    d clamped to [-20, 20] and the value to at most 10, which it reaches at d = -2.61 and
    d = 11.0; beyond those the term stays 10 with zero gradient, where unclamped it grows as
    e^-d (3.3e6 at d = -15, gradient -3.3e6)."""
    log_ratio = logprobs - ref_logprobs
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio ** 2
    if kind == "k3":
        log_ratio = log_ratio.clamp(-20, 20)
        return (torch.exp(-log_ratio) + log_ratio - 1).clamp(-10, 10)
    raise ValueError(f"unknown KL estimator {kind!r}; choose k1, k2 or k3")


@dataclass
class LossInputs:
    logprobs: torch.Tensor       # [b, r] log pi_theta of the response tokens (with grad)
    old_logprobs: torch.Tensor   # [b, r] log pi_old (the policy that sampled, or its recompute)
    advantages: torch.Tensor     # [b, r]
    weights: torch.Tensor        # [b, r] aggregation weights; zero on untrained tokens
    mask: torch.Tensor           # [b, r] 1 on trained tokens
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # what a loss `needs`


def loss_needs(fn) -> set[str]:
    """Extra inputs a loss asks the learner for: "mean_logsoftmax" (current and old),
    "whole_groups" (every micro-batch holds complete prompt groups)."""
    return getattr(fn, "needs", set())


def _clipped(ratio, adv, clip_low, clip_high):
    unclipped, clipped = -ratio * adv, -ratio.clamp(1 - clip_low, 1 + clip_high) * adv
    return torch.maximum(unclipped, clipped), clipped > unclipped


@register("loss", "ppo")
def ppo(x: LossInputs, clip_low: float = 0.2, clip_high: float = 0.2,
        dual_clip: float | None = None, guided_gamma: float = 0.1):
    """PPO clipped surrogate per token, -min(rho A, clip(rho, 1-eps_low, 1+eps_high) A).

    clip_high > clip_low is DAPO's clip-higher (arXiv:2503.14476; 0.28). dual_clip = c > 1
    bounds the loss of negative-advantage tokens by -c A (Ye et al., arXiv:1912.09729; 3.0).
    Tokens in extras["guided"] (written off-policy by a guide model, SCOPE) have no pi_old:
    their surrogate is A * p / (p + gamma) with p = pi_theta, unclipped (LUFFY's shaping,
    gamma 0.1). extras["tis_weight"] (truncated importance sampling) scales each token.
    """
    ratio = torch.exp(x.logprobs - x.old_logprobs)
    loss, clipped = _clipped(ratio, x.advantages, clip_low, clip_high)
    if dual_clip is not None:
        bound = -dual_clip * x.advantages
        clipped = clipped | ((x.advantages < 0) & (loss > bound))
        loss = torch.where(x.advantages < 0, torch.minimum(loss, bound), loss)
    guided = x.extras.get("guided")
    if guided is not None:
        p = torch.exp(x.logprobs)
        shaped = -x.advantages * p / (p + guided_gamma)
        loss = torch.where(guided > 0, shaped, loss)
        clipped = clipped & (guided == 0)
    if "tis_weight" in x.extras:
        loss = loss * x.extras["tis_weight"]
    return (x.weights * loss).sum(), {"clip_fraction": clipped.float(), "ratio": ratio.detach()}


@register("loss", "gspo")
def gspo(x: LossInputs, clip_low: float = 3e-4, clip_high: float = 4e-4):
    """GSPO (Zheng et al., arXiv:2507.18071): one importance ratio per sequence,
    s_i = exp(mean_t log(pi_theta / pi_old)), clipped at [1 - 3e-4, 1 + 4e-4]. Written per
    token as sg(s_i) * pi_theta(t) / sg(pi_theta(t)), whose gradient is GSPO's."""
    length = x.mask.sum(1).clamp(min=1)
    seq_log_ratio = ((x.logprobs - x.old_logprobs) * x.mask).sum(1) / length
    ratio = torch.exp(seq_log_ratio.detach()[:, None] + x.logprobs - x.logprobs.detach())
    loss, clipped = _clipped(ratio, x.advantages, clip_low, clip_high)
    if "tis_weight" in x.extras:
        loss = loss * x.extras["tis_weight"]
    return (x.weights * loss).sum(), {"clip_fraction": clipped.float(), "ratio": ratio.detach()}


@register("loss", "rover")
def rover(x: LossInputs, rho: float = 1.0):
    """ROVER (arXiv:2509.24981): regress Q = rho (log pi_theta - log pi_old) onto
    r~ + sg(V(s_{t+1})), with V the uniform-policy value rho * (vocab-mean log-softmax now -
    the same under pi_old) at the next position (0 after the last token). No clip, no KL."""
    diff = rho * (x.extras["mean_logsoftmax"] - x.extras["old_mean_logsoftmax"]) * x.mask
    next_value = torch.cat([diff[:, 1:], torch.zeros_like(diff[:, :1])], 1).detach()
    q = rho * (x.logprobs - x.old_logprobs)
    loss = (q - (x.advantages + next_value)) ** 2
    return (x.weights * loss).sum(), {"q_value": q.detach()}


rover.needs = {"mean_logsoftmax"}


@register("loss", "pacs")
def pacs(x: LossInputs, beta: float = 1.0, score: str = "rloo", class_weighting: bool = True):
    """PACS (arXiv:2509.02522): the outcome r in {0,1} is a label for a weighted BCE on the
    score psi_i built from s_i = beta * sum_t (log pi_theta - log pi_old):
    psi = s_i - mean of the group's others (rloo), a group z-score (grpo) or s (naive).
    Class weights per group are sklearn's "balanced" n / (classes * count). Needs whole
    groups in every micro-batch; each response's weight is the sum of its token weights."""
    s = beta * ((x.logprobs - x.old_logprobs) * x.mask).sum(1)
    labels, group = x.extras["seq_rewards"], x.extras["group"].long()
    _, group = torch.unique(group, return_inverse=True)
    n = int(group.max()) + 1
    count = torch.zeros(n, device=s.device).index_add_(0, group, torch.ones_like(s))
    total = torch.zeros(n, device=s.device).index_add_(0, group, s)
    if score == "rloo":
        psi = s - (total[group] - s) / (count[group] - 1).clamp(min=1)
    elif score == "grpo":
        mean = total[group] / count[group]
        var = torch.zeros(n, device=s.device).index_add_(0, group, (s - mean) ** 2)
        psi = (s - mean) / ((var / (count - 1).clamp(min=1)).sqrt()[group] + 1e-6)
    elif score == "naive":
        psi = s
    else:
        raise ValueError(f"pacs score must be rloo, grpo or naive, got {score!r}")
    weight = torch.ones_like(s)
    if class_weighting:
        positives = torch.zeros(n, device=s.device).index_add_(0, group, labels)
        pos, neg = positives[group], count[group] - positives[group]
        mixed = (pos > 0) & (neg > 0)
        balanced = torch.where(labels > 0.5, count[group] / (2 * pos.clamp(min=1)),
                               count[group] / (2 * neg.clamp(min=1)))
        weight = torch.where(mixed, balanced, weight)
    bce = F.binary_cross_entropy_with_logits(psi, labels, reduction="none")
    seq_weight = x.weights.sum(1)
    return (seq_weight * weight * bce).sum(), {"score": psi.detach()}


pacs.needs = {"whole_groups"}


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               weights: torch.Tensor, clip: float | None):
    """PPO's clipped critic loss 0.5 * max((V - R)^2, (V_old + clip(V - V_old, +-c) - R)^2)."""
    loss = (values - returns) ** 2
    if clip is not None:
        clipped = old_values + (values - old_values).clamp(-clip, clip)
        loss = torch.maximum(loss, (clipped - returns) ** 2)
    return 0.5 * (weights * loss).sum()


@dataclass
class LaserLoss:
    """LaSeR's auxiliary loss in the learner (arXiv:2510.14943; set from reward.laser and the
    self-reward source's kwargs, see conf/reward/laser.yaml)."""

    coef: float = 0.1               # alpha: weight of the MSE term in the loss (LaSeR: 0.1)
    token: str = "<|vision_start|>"  # z_c, the text of the token read right after the response
    beta_v: float = 0.1             # r_s = beta_v (log pi(z_c | x, y) - c_ref) (LaSeR: 0.1)
    c_ref: float | None = None      # null: the rollout source's, recovered on the first batch
    start_step: int = 0             # learner steps before the loss counts (reasoning warm-up)


def laser_aux_loss(zc_logprobs: torch.Tensor, verifier: torch.Tensor, weights: torch.Tensor,
                   c_ref: float, beta_v: float) -> tuple[torch.Tensor, torch.Tensor]:
    """LaSeR's MSE between the self-reward r_s = beta_v (log pi(z_c | x, y) - c_ref) and the
    verifier reward r_v, per response [b]: sum_i w_i (r_s,i - r_v,i)^2. The weights carry the
    class balance, zero for excluded (truncated) responses and 1/N of the mini-batch, so the
    micro-batches of all ranks add up to core/laser.py laser_loss of the mini-batch.
    Returns (loss, r_s)."""
    self_rewards = laser_self_reward(zc_logprobs, c_ref, beta_v)
    return (weights * (self_rewards - verifier) ** 2).sum(), self_rewards
