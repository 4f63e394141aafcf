"""LaSeR's maths (arXiv:2510.14943), shared by the reward that reads the last-token
self-reward and the learner that trains and mixes it: plain functions of numbers, so
neither package imports the other.
"""
from __future__ import annotations

import statistics
from typing import Sequence


def laser_self_reward(logprob_zc: float, c_ref: float = -23.0, beta_v: float = 0.1) -> float:
    """Last-token self-reward r_s = beta_v (log π(z_c | x, y) - c_ref) (LaSeR: beta_v 0.1,
    c_ref -23.0 for Qwen2.5). Works on floats and tensors alike."""
    return beta_v * (logprob_zc - c_ref)


def laser_balanced_weights(verifier_rewards: Sequence[float], truncated: Sequence[bool]) -> list[float]:
    """Class-balance weights, counted over non-truncated samples: correct (r_v >= 0.5)
    (N_c + N_i) / (2 N_c), incorrect (N_c + N_i) / (2 N_i), truncated 0."""
    correct = [r >= 0.5 for r in verifier_rewards]
    n_c = sum(1 for c, t in zip(correct, truncated) if c and not t)
    n_i = sum(1 for c, t in zip(correct, truncated) if not c and not t)
    total = n_c + n_i
    w_c = total / (2 * n_c) if n_c else 0.0
    w_i = total / (2 * n_i) if n_i else 0.0
    return [0.0 if t else (w_c if c else w_i) for c, t in zip(correct, truncated)]


def laser_loss(self_rewards: Sequence[float], verifier_rewards: Sequence[float],
               truncated: Sequence[bool], balanced: bool = True) -> float:
    """LaSeR auxiliary loss mean_i[w_i (r_s,i - r_v,i)^2 1[not truncated]], the mean over
    every sample as in the authors' code (weights from `laser_balanced_weights`, or 1 when
    not balanced). The trainer adds alpha times it to the policy loss (LaSeR: alpha 0.1)."""
    n = len(self_rewards)
    if n == 0:
        return 0.0
    weights = (laser_balanced_weights(verifier_rewards, truncated) if balanced
               else [0.0 if t else 1.0 for t in truncated])
    return sum(w * (s - v) ** 2 for w, s, v in zip(weights, self_rewards, verifier_rewards)) / n


def laser_self_advantages(self_rewards: Sequence[float], truncated: Sequence[bool],
                          std_threshold: float = 0.1) -> list[float] | None:
    """LaSeR's self-reward advantage A_s of one group: clamp(r_s, 0, 1) (truncated -> 0)
    normalised by the group mean and unbiased std; None when that std <= std_threshold (the
    group's self-rewards do not tell its responses apart; LaSeR: T 0.1). A group of one uses
    mean 0, std 1, as the authors' code does."""
    r = [0.0 if t else min(max(float(s), 0.0), 1.0) for s, t in zip(self_rewards, truncated)]
    if len(r) == 1:
        mean, std = 0.0, 1.0
    else:
        mean, std = sum(r) / len(r), statistics.stdev(r)
    return [(x - mean) / std for x in r] if std > std_threshold else None


def laser_mixed_advantages(verifier_adv: Sequence[float], self_rewards: Sequence[float],
                           truncated: Sequence[bool], tau: float = 0.1,
                           std_threshold: float = 0.1) -> list[float]:
    """LaSeR advantage for one group: Â = (1 - tau) A_v + tau A_s, with A_s from
    `laser_self_advantages`, or A_v itself when that is None (LaSeR: tau 0.1, T 0.1)."""
    a_s = laser_self_advantages(self_rewards, truncated, std_threshold) or list(verifier_adv)
    return [(1 - tau) * av + tau * a for av, a in zip(verifier_adv, a_s)]
