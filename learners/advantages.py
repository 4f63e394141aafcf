"""Advantage estimators: rewards of a whole rollout batch -> per-token advantages.

Each estimator is a pure function `fn(x: AdvantageInputs, **options) -> Advantages`,
registered by name (kind "advantage") and chosen by `algorithm.estimator`; its options come
from `algorithm.estimator_options`. Shapes: B responses, R response tokens. It runs once
over the whole rollout batch on the driver, so batch-level statistics (Lite PPO's batch
std, REINFORCE++'s whitening) are over every rank's samples, not one micro-batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from core.records import Sample
from core.registry import register
from core.steps import step_values_to_tokens
from rewards.self_rewards import laser_self_advantages


@dataclass
class AdvantageInputs:
    rewards: torch.Tensor            # [B] combined scalar reward of each response
    group: torch.Tensor              # [B] long: index of the response's prompt group
    mask: torch.Tensor               # [B, R] 1 on response tokens (before any loss masking)
    token_rewards: torch.Tensor      # [B, R] per-token rewards added on top (e.g. -beta * KL)
    samples: list[Sample]            # named sources, step scores, metadata
    values: torch.Tensor | None = None  # [B, R] critic values V(s_t) (GAE only)


@dataclass
class Advantages:
    advantages: torch.Tensor                 # [B, R], zero outside `mask`
    returns: torch.Tensor | None = None      # [B, R] critic regression targets (GAE)
    keep: torch.Tensor | None = None         # [B] bool; False drops a sample from the loss


def needs_values(fn) -> bool:
    return getattr(fn, "needs_values", False)


# --- shared helpers ------------------------------------------------------------------------


def group_stats(values: torch.Tensor, group: torch.Tensor, unbiased: bool = True):
    """Per-sample mean and std of the sample's group (unbiased = torch.std convention)."""
    n = int(group.max()) + 1
    count = torch.zeros(n).index_add_(0, group, torch.ones_like(values))
    mean = torch.zeros(n).index_add_(0, group, values) / count
    sq = torch.zeros(n).index_add_(0, group, (values - mean[group]) ** 2)
    dof = (count - 1).clamp(min=1) if unbiased else count
    return mean[group], (sq / dof).sqrt()[group]


def broadcast(per_sample: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return per_sample[:, None] * mask


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the tokens in `mask` (unbiased std), zero outside it."""
    n = mask.sum()
    mean = (x * mask).sum() / n
    var = (((x - mean) * mask) ** 2).sum() / (n - 1).clamp(min=1)
    return (x - mean) / (var.sqrt() + eps) * mask


def successes(x: AdvantageInputs, threshold: float) -> torch.Tensor:
    return (x.rewards > threshold).float()


def source_scores(x: AdvantageInputs, source: str) -> torch.Tensor:
    try:
        return torch.tensor([float(s.rewards[source]) for s in x.samples])
    except KeyError:
        raise KeyError(f"reward source {source!r} is missing: add it to reward.sources") from None


def _grpo_scalar(rewards, group, norm_by_std, eps, unbiased=True):
    mean, std = group_stats(rewards, group, unbiased)
    centred = rewards - mean
    return centred / (std + eps) if norm_by_std else centred


# --- estimators ----------------------------------------------------------------------------


@register("advantage", "grpo")
def grpo(x: AdvantageInputs, norm_by_std: bool = True, eps: float = 1e-6) -> Advantages:
    """GRPO (DeepSeekMath, arXiv:2402.03300): A_i = (r_i - mean_G) / (std_G + eps).

    `norm_by_std=False` is Dr.GRPO's A_i = r_i - mean_G (arXiv:2503.20783).
    """
    return Advantages(broadcast(_grpo_scalar(x.rewards, x.group, norm_by_std, eps), x.mask))


@register("advantage", "rloo")
def rloo(x: AdvantageInputs) -> Advantages:
    """RLOO (Ahmadian et al., arXiv:2402.14740): A_i = r_i - mean of the other G-1 rewards."""
    mean, _ = group_stats(x.rewards, x.group)
    count = torch.zeros(int(x.group.max()) + 1).index_add_(
        0, x.group, torch.ones_like(x.rewards))[x.group]
    adv = (x.rewards - mean) * count / (count - 1).clamp(min=1)
    return Advantages(broadcast(adv, x.mask))


def _token_returns(x: AdvantageInputs, scalar: torch.Tensor, gamma: float) -> torch.Tensor:
    """Discounted return per token of: `scalar` at each response's last token + token_rewards."""
    rewards = x.token_rewards.clone()
    last = (x.mask.sum(1).long() - 1).clamp(min=0)
    rewards[torch.arange(len(scalar)), last] += scalar
    returns = torch.zeros_like(rewards)
    running = torch.zeros(len(scalar))
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running * x.mask[:, t]
        returns[:, t] = running
    return returns * x.mask


@register("advantage", "reinforce_pp")
def reinforce_pp(x: AdvantageInputs, baseline: str = "none", gamma: float = 1.0) -> Advantages:
    """REINFORCE++ (Hu, arXiv:2501.03262): token returns of the reward plus per-token
    rewards (the KL penalty, when algorithm.kl_in_reward_coef > 0), whitened over the
    whole batch. `baseline="group"` (REINFORCE++-baseline) first subtracts the group mean."""
    if baseline not in ("none", "group"):
        raise ValueError(f"reinforce_pp baseline must be none or group, got {baseline!r}")
    scalar = x.rewards
    if baseline == "group":
        scalar = scalar - group_stats(scalar, x.group)[0]
    return Advantages(masked_whiten(_token_returns(x, scalar, gamma), x.mask))


@register("advantage", "remax")
def remax(x: AdvantageInputs) -> Advantages:
    """ReMax (Li et al., arXiv:2310.10505): A_i = r_i - r(greedy response to the same prompt).

    The scheduler decodes one greedy response per prompt and stores its reward in
    `sample.metadata["greedy_reward"]`."""
    try:
        base = torch.tensor([float(s.metadata["greedy_reward"]) for s in x.samples])
    except KeyError:
        raise KeyError("remax needs metadata['greedy_reward']; the scheduler adds it when "
                       "algorithm.greedy_baseline=true") from None
    return Advantages(broadcast(x.rewards - base, x.mask))


@register("advantage", "lite_ppo")
def lite_ppo(x: AdvantageInputs, eps: float = 1e-6) -> Advantages:
    """Lite PPO (arXiv:2508.08221): (r_i - group mean) / (std of all rewards in the batch).

    The std is unbiased and over the whole rollout batch (every rank's samples)."""
    mean, _ = group_stats(x.rewards, x.group)
    return Advantages(broadcast((x.rewards - mean) / (x.rewards.std() + eps), x.mask))


@register("advantage", "psr_nsr")
def psr_nsr(x: AdvantageInputs, mode: str = "w", positive_weight: float = 0.1,
            success_threshold: float = 0.5) -> Advantages:
    """PSR / NSR / W-REINFORCE (Zhu et al., arXiv:2506.01347), no baseline, no normalisation.

    mode "psr": A = 1 on correct, 0 on wrong; "nsr": 0 on correct, -1 on wrong;
    "w" (W-REINFORCE): positive_weight (lambda, 0.1) on correct, -1 on wrong.
    Correct means reward > success_threshold."""
    s = successes(x, success_threshold)
    table = {"psr": (1.0, 0.0), "nsr": (0.0, -1.0), "w": (positive_weight, -1.0)}
    if mode not in table:
        raise ValueError(f"psr_nsr mode must be psr, nsr or w, got {mode!r}")
    right, wrong = table[mode]
    return Advantages(broadcast(s * right + (1 - s) * wrong, x.mask))


@register("advantage", "weighted_grpo")
def weighted_grpo(x: AdvantageInputs, reading: str = "scale_negative",
                  negative_weight: float = 2.0, success_threshold: float = 0.5,
                  eps: float = 1e-6) -> Advantages:
    """Weighted GRPO with positive/negative prompt pairs ("Beyond Variance", arXiv:2602.03452).

    Outcomes map to +1 (success) / -negative_weight (failure). Three readings [inferred]:
      "pooled":         z-score with mean and population std pooled over the pair's two groups
                        (`metadata["pair_id"]`; a group without one is its own pair)
      "mean_center":    r~ - mean of the group
      "scale_negative": z-score per group (population std), then negative advantages
                        multiplied by negative_weight (default, the spec's favoured reading)
    """
    s = successes(x, success_threshold)
    mapped = s - (1 - s) * negative_weight
    if reading == "pooled":
        ids: dict = {}
        pair_of_group = {}
        for g, sample in zip(x.group.tolist(), x.samples):
            pair_of_group.setdefault(g, sample.metadata.get("pair_id", f"group-{g}"))
        pair = torch.tensor([ids.setdefault(pair_of_group[g], len(ids)) for g in x.group.tolist()])
        mean, std = group_stats(mapped, pair, unbiased=False)
        adv = (mapped - mean) / (std + eps)
    elif reading == "mean_center":
        adv = mapped - group_stats(mapped, x.group)[0]
    elif reading == "scale_negative":
        mean, std = group_stats(mapped, x.group, unbiased=False)
        adv = (mapped - mean) / (std + eps)
        adv = torch.where(adv < 0, adv * negative_weight, adv)
    else:
        raise ValueError(f"weighted_grpo reading must be pooled, mean_center or scale_negative, "
                         f"got {reading!r}")
    return Advantages(broadcast(adv, x.mask))


@register("advantage", "fapo")
def fapo(x: AdvantageInputs, flaw_source: str = "flawed", penalty: float = 1.0,
         success_threshold: float = 0.5, norm_by_std: bool = True,
         eps: float = 1e-6) -> Advantages:
    """FAPO (arXiv:2510.22543): reward +1 correct, -1 wrong, and -penalty (lambda = 1) more
    for a flawed positive (a correct answer that reward source `flaw_source` flags), then
    GRPO's group advantage. Flawed positives are rewarded while wrong answers outnumber
    sound ones in the group, and penalised once sound ones dominate."""
    s = successes(x, success_threshold)
    flawed = (source_scores(x, flaw_source) > 0.5).float() * s
    shaped = 2 * s - 1 - penalty * flawed
    return Advantages(broadcast(_grpo_scalar(shaped, x.group, norm_by_std, eps), x.mask))


@register("advantage", "grpo_s")
def grpo_s(x: AdvantageInputs, hardness_source: str = "hardness", responsiveness: float = 1.0,
           norm_by_std: bool = True, eps: float = 1e-6) -> Advantages:
    """GRPO-S difficulty scaling (DR-IRL, arXiv:2503.18991): A_i = alpha_i * GRPO A_i with
    alpha_i = sigmoid(delta_i) / sigmoid(mean delta over the batch) * responsiveness, where
    delta_i (data hardness, 1 - similarity to a demonstration) comes from `hardness_source`
    and responsiveness is alpha^M (1 when not measured)."""
    delta = source_scores(x, hardness_source)
    alpha = torch.sigmoid(delta) / torch.sigmoid(delta.mean()) * responsiveness
    adv = alpha * _grpo_scalar(x.rewards, x.group, norm_by_std, eps)
    return Advantages(broadcast(adv, x.mask))


@register("advantage", "brpo")
def brpo(x: AdvantageInputs, reference_source: str = "vs_reference",
         skew_threshold: float = 0.6) -> Advantages:
    """BRPO (Writing-Zero, arXiv:2506.00103): A_i = R_i from `reference_source`, a
    bootstrapped-reference source (+1 beats the group's random reference, -1 not, 0 the
    reference; rewards/pairwise.py), with no normalisation. Groups with
    |sum R| / G > skew_threshold are dropped from the loss."""
    scores = source_scores(x, reference_source)
    total = torch.zeros(int(x.group.max()) + 1).index_add_(0, x.group, scores)
    count = torch.zeros_like(total).index_add_(0, x.group, torch.ones_like(scores))
    keep = ((total.abs() / count) <= skew_threshold)[x.group]
    return Advantages(broadcast(scores, x.mask), keep=keep)


@register("advantage", "rover")
def rover(x: AdvantageInputs, norm_by_std: bool = False, eps: float = 1e-6) -> Advantages:
    """ROVER's reward r~ = r - group mean (arXiv:2509.24981; the released Math script
    divides by the group std too: norm_by_std=true). Use with loss "rover"."""
    return Advantages(broadcast(_grpo_scalar(x.rewards, x.group, norm_by_std, eps), x.mask))


@register("advantage", "pacs")
def pacs(x: AdvantageInputs) -> Advantages:
    """PACS (arXiv:2509.02522): the outcome itself is the label of a supervised loss; the
    per-token "advantage" carries r in {0, 1} to loss "pacs", which forms the score."""
    return Advantages(broadcast(x.rewards, x.mask))


@register("advantage", "capo")
def capo(x: AdvantageInputs, critique_source: str = "step_errors", whole_weight: float = 2.0,
         process_weight: float = 1.0, success_threshold: float = 0.5, norm_by_std: bool = True,
         eps: float = 1e-6) -> Advantages:
    """CAPO (arXiv:2508.02298) token rewards R_t = correct * W_whole - flagged(t) * W_process,
    where a token is flagged when `critique_source` marks its step wrong (step score > 0.5),
    then normalised against all tokens of all responses in the group (mean, unbiased std)."""
    s = successes(x, success_threshold)
    flagged = torch.zeros_like(x.mask)
    for i, sample in enumerate(x.samples):
        steps = sample.step_scores.get(critique_source)
        if steps is None:
            raise KeyError(f"capo needs step scores from reward source {critique_source!r} "
                           "(a granularity: step source, with rollout.step_delimiter set)")
        marks = [1.0 if v > 0.5 else 0.0 for v in steps]
        flagged[i] = step_values_to_tokens(sample.step_ends, marks, x.mask.shape[1])
    rewards = (s[:, None] * whole_weight - flagged * process_weight) * x.mask
    n_groups = int(x.group.max()) + 1
    count = torch.zeros(n_groups).index_add_(0, x.group, x.mask.sum(1))
    mean = torch.zeros(n_groups).index_add_(0, x.group, rewards.sum(1)) / count
    centred = (rewards - mean[x.group][:, None]) * x.mask
    if not norm_by_std:
        return Advantages(centred)
    sq = torch.zeros(n_groups).index_add_(0, x.group, (centred ** 2).sum(1))
    std = (sq / (count - 1).clamp(min=1)).sqrt()
    return Advantages(centred / (std[x.group][:, None] + eps))


def _gae(x: AdvantageInputs, gamma: float, lam: float):
    rewards = x.token_rewards.clone()
    last = (x.mask.sum(1).long() - 1).clamp(min=0)
    rewards[torch.arange(len(x.rewards)), last] += x.rewards
    values = x.values * x.mask
    zero = torch.zeros(len(rewards), 1)
    next_values = torch.cat([values[:, 1:], zero], 1)   # V(s_{t+1}); 0 after the last token
    continues = torch.cat([x.mask[:, 1:], zero], 1)
    adv = torch.zeros_like(rewards)
    running = torch.zeros(len(rewards))
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_values[:, t] - values[:, t]
        running = delta + gamma * lam * continues[:, t] * running
        adv[:, t] = running
    adv = adv * x.mask
    return adv, adv + values


@register("advantage", "gae")
def gae(x: AdvantageInputs, gamma: float = 1.0, lam: float = 0.95,
        whiten: bool = True) -> Advantages:
    """GAE (Schulman et al., arXiv:1506.02438) with a learned critic (PPO): the outcome reward
    sits on the last response token, plus any per-token rewards (KL penalty). Returns are
    the critic's targets; advantages are whitened over the batch (as in PPO for LLMs)."""
    if x.values is None:
        raise ValueError("gae needs critic values: set learner.critic=true")
    adv, returns = _gae(x, gamma, lam)
    return Advantages(masked_whiten(adv, x.mask) if whiten else adv, returns=returns)


gae.needs_values = True


@register("advantage", "constrained")
def constrained(x: AdvantageInputs, constraints: dict, multipliers: dict | None = None,
                base_source: str | None = None, norm_by_std: bool = True,
                eps: float = 1e-6, multiplier: dict | None = None) -> Advantages:
    """Constrained RLHF with composite reward models (Moskovitz et al., arXiv:2310.04373):
    A = (N - sum_i lambda_i) A_base + sum_i lambda_i A_i, each term the GRPO advantage of one
    reward (the paper uses a value head per component; group baselines here [inferred]).
    A_base is the advantage of `base_source` (null: the combined reward, which carries the
    KL penalty when kl_in_reward is set; the paper's A_KL). `constraints` maps each component
    source to its threshold theta_i; the scheduler learns `multipliers` (lambda_i) from the
    batch means and passes them in (rewards/self_rewards.py LagrangeMultipliers, built with
    the `multiplier` options: kind, lr, momentum)."""
    if multipliers is None:
        raise ValueError("algorithm=constrained needs the scheduler's multipliers")
    base = x.rewards if base_source is None else source_scores(x, base_source)
    mixed = (len(constraints) - sum(multipliers.values())) * _grpo_scalar(base, x.group, norm_by_std, eps)
    for name in constraints:
        mixed = mixed + multipliers[name] * _grpo_scalar(source_scores(x, name), x.group,
                                                         norm_by_std, eps)
    return Advantages(broadcast(mixed, x.mask))


# --- adjustments applied after any estimator -------------------------------------------------


def laser_mix(x: AdvantageInputs, advantages: torch.Tensor, self_reward_source: str,
              tau: float = 0.1, std_threshold: float = 0.1) -> tuple[torch.Tensor, float]:
    """LaSeR advantage mixing (arXiv:2510.14943): per group, Â = (1 - tau) A + tau A_s, with
    A the estimator's advantages [B, R] and A_s the group-normalised self-rewards of
    `self_reward_source` (rewards/self_rewards.py laser_self_advantages: clamped to [0, 1],
    truncated -> 0). A group whose self-rewards spread by no more than std_threshold keeps A
    (the paper's "A_s = A_v"). Returns (mixed advantages, fraction of groups mixed).
    LaSeR: tau 0.1, T 0.1, on GRPO advantages."""
    self_rewards = source_scores(x, self_reward_source)
    truncated = [s.truncated for s in x.samples]
    self_adv = torch.zeros(len(x.samples))
    mixed = torch.zeros(len(x.samples), dtype=torch.bool)
    groups_mixed = 0
    groups = x.group.unique()
    for g in groups:
        rows = (x.group == g).nonzero().flatten()
        a_s = laser_self_advantages(self_rewards[rows].tolist(),
                                    [truncated[i] for i in rows.tolist()], std_threshold)
        if a_s is not None:
            self_adv[rows], mixed[rows] = torch.tensor(a_s), True
            groups_mixed += 1
    blended = (1 - tau) * advantages + tau * broadcast(self_adv, x.mask)
    return torch.where(mixed[:, None], blended, advantages), groups_mixed / max(len(groups), 1)
