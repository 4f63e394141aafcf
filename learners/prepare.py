"""Turn annotated samples into a learner batch: advantages and loss weights per token.

This is where the algorithm lives; the learner itself only applies what arrives here.
"""
from __future__ import annotations

import torch

from core.records import Batch, Sample
from core.registry import lookup
from learners.algorithms import aggregation_weights


def group_index(samples: list[Sample]) -> torch.Tensor:
    ids: dict[str, int] = {}
    return torch.tensor([ids.setdefault(s.group_id, len(ids)) for s in samples])


def build_train_batch(samples: list[Sample], *, pad_id: int, estimator: str,
                      estimator_options: dict, loss_aggregation: str, mini_batch_size: int,
                      max_new_tokens: int, exclude_flagged: bool = True) -> Batch:
    """Advantages from the combined rewards, broadcast to tokens; loss weights per mini-batch.

    Flagged samples (a reward source failed) keep their place in their group's statistics
    but, with `exclude_flagged`, get a zero loss mask so no gradient flows from them.
    """
    if exclude_flagged:
        for s in samples:
            if s.flagged:
                s.loss_mask = [0] * len(s.response_ids)
    rewards = torch.tensor([float(s.reward) for s in samples])
    advantages = lookup("advantage", estimator)(rewards, group_index(samples), **estimator_options)
    batch = Batch.from_samples(samples, pad_id)
    mask = batch.response_mask
    weights = torch.zeros_like(mask)
    for start in range(0, len(samples), mini_batch_size):
        rows = slice(start, start + mini_batch_size)
        weights[rows] = aggregation_weights(mask[rows], loss_aggregation, max_new_tokens)
    batch.extras["advantages"] = advantages[:, None] * mask
    batch.extras["loss_weights"] = weights
    return batch


def build_sft_batch(prompt_ids: list[list[int]], target_ids: list[list[int]], pad_id: int) -> Batch:
    """A supervised batch: token-mean cross-entropy over the target tokens of all rows."""
    samples = [Sample(prompt_id="", group_id="", prompt_ids=p, response_ids=t,
                      behaviour_logprobs=[0.0] * len(t), policy_version=0)
               for p, t in zip(prompt_ids, target_ids)]
    batch = Batch.from_samples(samples, pad_id)
    batch.extras["loss_weights"] = aggregation_weights(batch.response_mask, "token-mean")
    return batch
