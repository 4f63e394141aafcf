"""Turn annotated samples into a learner batch: advantages and loss weights per token.

This is where the algorithm lives (estimator, masks, aggregation); the learner only applies
what arrives here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from core.records import Batch, Sample
from core.schema import checked
from core.registry import lookup
from learners.advantages import AdvantageInputs, declared, laser_mix
from learners.losses import LaserLoss, aggregation_weights, kl_estimate
from learners.micro_batches import mini_batch_ids, mini_batch_rows
from core.laser import laser_balanced_weights


@dataclass
class BatchRecipe:
    """The algorithm's choices for building a learner batch (conf/algorithm/*.yaml)."""

    estimator: str = "grpo"
    estimator_options: dict = field(default_factory=dict)
    loss_aggregation: str = "seq-mean-token-mean"
    mini_batch_size: int = 64         # responses per optimizer step (all ranks)
    num_ranks: int = 1                # learner ranks; each takes an equal share of every mini-batch
    max_new_tokens: int = 64          # L_max, for seq-mean-token-sum-norm
    exclude_flagged: bool = True      # no gradient from samples a reward source failed on
    masking_sources: list[str] | None = None  # the sources whose flags exclude a sample (those
                                      # the training signal reads); None = every source's
    overlong_filter: bool = False     # no gradient from truncated responses (DAPO)
    kl_in_reward_coef: float = 0.0    # per-token reward -coef * KL(pi_old || pi_ref); summed
                                      # into the reward for estimators with token_rewards="summed"
    kl_estimator: str = "k1"
    step_rewards: dict = field(default_factory=dict)  # step source -> weight of its step
                                      # scores, given as rewards on each step's last token
    laser: dict | None = None         # reward.laser (LaserOptions): LaSeR loss inputs and mixing


@dataclass
class LaserOptions:
    """LaSeR training (arXiv:2510.14943), the `reward.laser` block of the config schema (a
    reward config sets it to train with the self-reward; conf/reward/laser.yaml). The source's
    own z_c, beta_v and c_ref are in its kwargs (rewards: fn laser), read by the learner too."""

    self_reward_source: str = "self_verify"   # the fn: laser source whose r_s is mixed and whose
                                              # z_c/beta_v/c_ref the loss uses
    verifier_source: str = "correct"          # the 0/1 verifier reward r_v the self-reward learns to predict
    loss_coef: float = checked(0.1, ge=0)     # alpha, weight of the MSE term mean_i w_i (r_s - r_v)^2
                                              # in the loss (LaSeR: 0.1); 0 = no auxiliary loss
    balanced: bool = True                     # class-balanced MSE weights (N_c+N_i)/(2 N_c) and
                                              # (N_c+N_i)/(2 N_i) per mini-batch (LaSeR: true)
    reasoning_warmup_steps: int = checked(0, ge=0)  # RL steps with the policy loss only, before the
                                              # MSE counts (LaSeR: 200 for base models, 0 for ORZ)
    mix_coef: float = checked(0.1, ge=0, le=1)  # tau: advantage = (1 - tau) A_v + tau A_s per group
                                              # (LaSeR: 0.1); 0 = no mixing
    mix_std_threshold: float = checked(0.1, ge=0)  # T: a group whose clamped self-rewards have
                                              # unbiased std <= T keeps A_v (LaSeR: 0.1)
    self_rewarding_warmup_steps: int = checked(0, ge=0)  # further RL steps after the reasoning
                                              # warm-up before mixing starts (LaSeR: 200)

    @property
    def mix_start_step(self) -> int:
        return self.reasoning_warmup_steps + self.self_rewarding_warmup_steps


def laser_loss_settings(laser: dict | None, sources: list[dict]) -> dict | None:
    """The learner's LaserLoss settings from reward.laser, or None when it is absent. z_c,
    beta_v and c_ref are read from the self-reward source's kwargs (its defaults when
    unset), so the rollout side and the learner cannot disagree on them."""
    if not laser:
        return None
    options = LaserOptions(**laser)
    source = next(s for s in sources if s["name"] == options.self_reward_source)
    scorer = lookup("reward", source["fn"])(**(source.get("kwargs") or {}))
    return asdict(LaserLoss(coef=options.loss_coef, token=scorer.token, beta_v=scorer.beta_v,
                            c_ref=scorer.c_ref, start_step=options.reasoning_warmup_steps))


def group_index(samples: list[Sample]) -> torch.Tensor:
    ids: dict[str, int] = {}
    return torch.tensor([ids.setdefault(s.group_id, len(ids)) for s in samples])


def masked_by_flags(sample: Sample, recipe: BatchRecipe) -> bool:
    """With exclude_flagged: a failed source the training signal reads leaves the sample
    out; a failure of an informing-only source (weight 0, read by nothing) does not."""
    if not recipe.exclude_flagged:
        return False
    if recipe.masking_sources is None:
        return sample.flagged
    return any(name in sample.flags for name in recipe.masking_sources)


def build_train_batch(samples: list[Sample], recipe: BatchRecipe, pad_id: int,
                      annotations: dict[str, torch.Tensor] | None = None) -> tuple[Batch, dict]:
    """Advantages from the rewards (and critic values / reference log-probs in
    `annotations`), broadcast to tokens; loss weights per global mini-batch.

    Masked-out samples (flagged, overlong, dropped by the estimator) keep their place in
    their group's statistics but carry no gradient. Returns (batch, metrics).
    """
    annotations = annotations or {}
    for s in samples:
        if masked_by_flags(s, recipe) or (recipe.overlong_filter and s.truncated):
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
    estimator = lookup("advantage", recipe.estimator)
    rewards = torch.tensor([float(s.reward) for s in samples])
    if declared(estimator, "token_rewards", recipe.estimator_options) == "summed":
        rewards = rewards + token_rewards.sum(1)   # scalar estimators see KL and step rewards too
    inputs = AdvantageInputs(rewards, group_index(samples), sampled, token_rewards, samples,
                             annotations.get("values"))
    out = estimator(inputs, **recipe.estimator_options)
    laser = LaserOptions(**recipe.laser) if recipe.laser else None
    if laser and laser_mixing_on(laser, samples):
        out.advantages, metrics["laser_mixed_groups"] = laser_mix(
            inputs, out.advantages, laser.self_reward_source, laser.mix_coef,
            laser.mix_std_threshold)
    mask = batch.response_mask
    if out.keep is not None:
        mask *= out.keep[:, None].float()
        metrics["kept_fraction"] = float(out.keep.float().mean())
    mini = mini_batch_ids([len(samples)], recipe.mini_batch_size)
    advantages = out.advantages * mask
    batch.extras.update(advantages=advantages, seq_rewards=inputs.rewards,
                        group=inputs.group.float(), **loss_weighting(samples, mask, mini, recipe))
    if "ref_logprobs" in annotations:
        batch.extras["ref_logprobs"] = annotations["ref_logprobs"]
    if laser:
        batch.extras.update(laser_loss_inputs(samples, laser, recipe))
    if out.returns is not None:
        batch.extras.update(returns=out.returns, old_values=annotations["values"],
                            value_weights=batch.extras["token_weights"])
    trained = mask.sum().clamp(min=1)
    metrics["advantage_mean"] = float(advantages.sum() / trained)
    metrics["advantage_abs_mean"] = float(advantages.abs().sum() / trained)
    metrics["trained_token_fraction"] = float(mask.sum() / sampled.sum().clamp(min=1))
    return batch, metrics


def keep_advantages(samples: list[Sample], batch: Batch) -> None:
    """Write each sample's advantages and trained-token mask from its learner batch onto the
    sample, so it can be trained again later as this step computed it (RoRecomp)."""
    advantages, mask = batch.extras["advantages"], batch.response_mask
    for i, s in enumerate(samples):
        n = len(s.response_ids)
        s.advantages = advantages[i, :n].tolist()
        s.loss_mask = [int(m) for m in mask[i, :n].tolist()]


def recomposed_batch(priority: list[Sample], compensation: list[list[Sample]],
                     recipe: BatchRecipe, pad_id: int) -> tuple[Batch, dict]:
    """A learner batch of RoRecomp's priority batch, then its compensation batches, from
    samples that carry the advantages and masks of the step that sampled them
    (keep_advantages). Each of those batches takes ceil(n / mini_batch_size) optimizer steps;
    compensation rows are `replayed`: the learner keeps their behaviour log-probs as pi_old."""
    samples = priority + [s for batch in compensation for s in batch]
    batch = Batch.from_samples(samples, pad_id)
    mask = batch.response_mask
    advantages = torch.zeros_like(mask)
    for i, s in enumerate(samples):
        advantages[i, :len(s.advantages)] = torch.tensor(s.advantages)
    sizes = [len(priority)] + [len(b) for b in compensation]
    mini = mini_batch_ids(sizes, recipe.mini_batch_size, recipe.num_ranks)
    batch.extras.update(
        advantages=advantages * mask,
        replayed=torch.tensor([0.0] * len(priority) + [1.0] * (len(samples) - len(priority))),
        seq_rewards=torch.tensor([float(s.reward) for s in samples]),
        group=group_index(samples).float(), **loss_weighting(samples, mask, mini, recipe))
    return batch, {"priority_samples": float(len(priority)),
                   "compensation_samples": float(len(samples) - len(priority)),
                   "optimizer_steps": float(int(mini[-1]) + 1)}


def laser_mixing_on(laser: LaserOptions, samples: list[Sample]) -> bool:
    """Mixing starts once every sample comes from a policy trained for both warm-ups (the
    policy version that sampled it counts the learner steps taken, as LaSeR's global step)."""
    return laser.mix_coef > 0 and min(s.policy_version for s in samples) >= laser.mix_start_step


def laser_loss_inputs(samples: list[Sample], laser: LaserOptions,
                      recipe: BatchRecipe) -> dict[str, torch.Tensor]:
    """[B] inputs of the learner's LaSeR loss: the verifier reward r_v, the rollout's
    self-reward r_s (with `laser_anchor` 1 where that source did not fail; the learner
    recovers c_ref from them), and weights computed per global mini-batch so micro-batches
    and ranks add up: `laser_loss_weights` = balanced weight / mini-batch size (laser_loss's
    mean over every sample), `laser_count_weights` = 1 / responses counted, for metrics.
    Truncated responses are left out (LaSeR), and flagged ones too when
    reward.exclude_flagged_from_loss (their r_v may be a failure value)."""
    def scores(source):
        try:
            return [float(s.rewards[source]) for s in samples]
        except KeyError:
            raise KeyError(f"reward.laser names source {source!r}, which the samples lack: "
                           "add it to reward.sources") from None
    verifier = scores(laser.verifier_source)
    excluded = [s.truncated or masked_by_flags(s, recipe) for s in samples]
    loss_weights, count_weights = torch.zeros(len(samples)), torch.zeros(len(samples))
    for rows in mini_batch_rows(mini_batch_ids([len(samples)], recipe.mini_batch_size)):
        r_v, out = verifier[rows], excluded[rows]
        w = laser_balanced_weights(r_v, out) if laser.balanced else [float(not e) for e in out]
        loss_weights[rows] = torch.tensor(w) / len(r_v)
        kept = torch.tensor([float(not e) for e in out])
        count_weights[rows] = kept / kept.sum().clamp(min=1)
    return {"laser_verifier": torch.tensor(verifier),
            "laser_rollout_self_reward": torch.tensor(scores(laser.self_reward_source)),
            "laser_anchor": torch.tensor([float(laser.self_reward_source not in s.flags)
                                          for s in samples]),
            "laser_loss_weights": loss_weights, "laser_count_weights": count_weights}


def per_mini_batch(mask: torch.Tensor, mini: torch.Tensor, mode: str,
                   max_len: int | None) -> torch.Tensor:
    """Aggregation weights computed separately for each global mini-batch of rows."""
    weights = torch.zeros_like(mask)
    for rows in mini_batch_rows(mini):
        weights[rows] = aggregation_weights(mask[rows], mode, max_len)
    return weights


def loss_weighting(samples: list[Sample], mask: torch.Tensor, mini: torch.Tensor,
                   recipe: BatchRecipe) -> dict[str, torch.Tensor]:
    """The learner's per-token weights: `loss_weights` (the algorithm's aggregation, each
    response scaled by its Sample.loss_weight), `token_weights` (a plain token mean, for
    monitored values), and `mini_batch` (the optimizer step of each row)."""
    scale = torch.tensor([s.loss_weight for s in samples], dtype=mask.dtype)[:, None]
    weights = per_mini_batch(mask, mini, recipe.loss_aggregation, recipe.max_new_tokens) * scale
    return {"loss_weights": weights, "mini_batch": mini,
            "token_weights": per_mini_batch(mask, mini, "token-mean", None)}


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
