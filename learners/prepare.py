"""Turn annotated samples into a learner batch: advantages and loss weights per token.

This is where the algorithm lives (estimator, masks, aggregation); the learner only applies
what arrives here.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from core.records import Batch, Sample
from core.registry import lookup
from learners.advantages import AdvantageInputs
from learners.losses import aggregation_weights, kl_estimate


@dataclass
class BatchRecipe:
    """The algorithm's choices for building a learner batch (conf/algorithm/*.yaml)."""

    estimator: str = "grpo"
    estimator_options: dict = field(default_factory=dict)
    loss_aggregation: str = "seq-mean-token-mean"
    mini_batch_size: int = 64         # responses per optimizer step (all ranks)
    max_new_tokens: int = 64          # L_max, for seq-mean-token-sum-norm
    exclude_flagged: bool = True      # no gradient from samples a reward source failed on
    overlong_filter: bool = False     # no gradient from truncated responses (DAPO)
    kl_in_reward_coef: float = 0.0    # per-token reward -coef * KL(pi_old || pi_ref)
    kl_estimator: str = "k1"
    step_rewards: dict = field(default_factory=dict)  # step source -> weight of its step
                                      # scores, given as rewards on each step's last token


def group_index(samples: list[Sample]) -> torch.Tensor:
    ids: dict[str, int] = {}
    return torch.tensor([ids.setdefault(s.group_id, len(ids)) for s in samples])


def build_train_batch(samples: list[Sample], recipe: BatchRecipe, pad_id: int,
                      annotations: dict[str, torch.Tensor] | None = None) -> tuple[Batch, dict]:
    """Advantages from the rewards (and critic values / reference log-probs in
    `annotations`), broadcast to tokens; loss weights per global mini-batch.

    Masked-out samples (flagged, overlong, dropped by the estimator) keep their place in
    their group's statistics but carry no gradient. Returns (batch, metrics).
    """
    annotations = annotations or {}
    for s in samples:
        if (recipe.exclude_flagged and s.flagged) or (recipe.overlong_filter and s.truncated):
            s.loss_mask = [0] * len(s.response_ids)
    batch = Batch.from_samples(samples, pad_id)
    sampled = batch.attention_mask[:, batch.prompt_len:].float()
    token_rewards = torch.zeros_like(sampled)
    metrics = {}
    if recipe.kl_in_reward_coef:
        kl = kl_estimate(batch.behaviour_logprobs, annotations["ref_logprobs"],
                         recipe.kl_estimator) * sampled
        token_rewards -= recipe.kl_in_reward_coef * kl
        metrics["kl_in_reward"] = float(kl.sum() / sampled.sum())
    for source, weight in recipe.step_rewards.items():
        token_rewards += weight * step_end_rewards(samples, source, sampled.shape[1])
    inputs = AdvantageInputs(torch.tensor([float(s.reward) for s in samples]),
                             group_index(samples), sampled, token_rewards, samples,
                             annotations.get("values"))
    out = lookup("advantage", recipe.estimator)(inputs, **recipe.estimator_options)
    mask = batch.response_mask
    if out.keep is not None:
        mask *= out.keep[:, None].float()
        metrics["kept_fraction"] = float(out.keep.float().mean())
    weights = per_mini_batch(mask, recipe, recipe.loss_aggregation)
    token_weights = per_mini_batch(mask, recipe, "token-mean")  # for monitored means
    advantages = out.advantages * mask
    batch.extras.update(advantages=advantages, loss_weights=weights, token_weights=token_weights,
                        seq_rewards=inputs.rewards, group=inputs.group.float())
    if "ref_logprobs" in annotations:
        batch.extras["ref_logprobs"] = annotations["ref_logprobs"]
    if out.returns is not None:
        batch.extras.update(returns=out.returns, old_values=annotations["values"],
                            value_weights=token_weights)
    trained = mask.sum().clamp(min=1)
    metrics["advantage_mean"] = float(advantages.sum() / trained)
    metrics["advantage_abs_mean"] = float(advantages.abs().sum() / trained)
    metrics["trained_token_fraction"] = float(mask.sum() / sampled.sum().clamp(min=1))
    return batch, metrics


def per_mini_batch(mask: torch.Tensor, recipe: BatchRecipe, mode: str) -> torch.Tensor:
    """Aggregation weights computed separately for each global mini-batch of rows."""
    weights = torch.zeros_like(mask)
    for start in range(0, len(mask), recipe.mini_batch_size):
        rows = slice(start, start + recipe.mini_batch_size)
        weights[rows] = aggregation_weights(mask[rows], mode, recipe.max_new_tokens)
    return weights


def step_end_rewards(samples: list[Sample], source: str, width: int) -> torch.Tensor:
    """[B, width]: each step's score from step source `source` on the step's last token."""
    out = torch.zeros(len(samples), width)
    for i, s in enumerate(samples):
        if source not in s.step_scores:
            raise KeyError(f"algorithm.step_rewards names {source!r}, but sample has no step "
                           "scores from it (a granularity: step reward source)")
        for end, score in zip(s.step_ends, s.step_scores[source]):
            out[i, min(end, width) - 1] += score
    return out


def build_sft_batch(prompt_ids: list[list[int]], target_ids: list[list[int]], pad_id: int) -> Batch:
    """A supervised batch: token-mean cross-entropy over the target tokens of all rows."""
    batch = Batch.from_samples(_plain_samples(prompt_ids, target_ids), pad_id)
    batch.extras["loss_weights"] = aggregation_weights(batch.response_mask, "token-mean")
    return batch


def build_pair_batch(prompt_ids: list[list[int]], chosen_ids: list[list[int]],
                     rejected_ids: list[list[int]], pad_id: int) -> Batch:
    """A preference batch: rows 2k and 2k+1 are pair k's chosen and rejected response."""
    prompts = [p for p in prompt_ids for _ in range(2)]
    targets = [t for pair in zip(chosen_ids, rejected_ids) for t in pair]
    return Batch.from_samples(_plain_samples(prompts, targets), pad_id)


def _plain_samples(prompt_ids, target_ids) -> list[Sample]:
    return [Sample(prompt_id="", group_id="", prompt_ids=p, response_ids=t,
                   behaviour_logprobs=[0.0] * len(t), policy_version=0)
            for p, t in zip(prompt_ids, target_ids)]
