"""Worked examples from shared/methods/algorithms-and-buffers.md and invariants."""
import torch

from learners.algorithms import (aggregation_weights, clipped_policy_loss, grpo_advantages,
                                 kl_estimate)
from learners.prepare import build_train_batch
from core.records import Sample


def test_grpo_worked_example_unbiased_std():
    adv = grpo_advantages(torch.tensor([1.0, 0, 0, 0]), torch.tensor([0, 0, 0, 0]))
    assert torch.allclose(adv, torch.tensor([1.5, -0.5, -0.5, -0.5]), atol=1e-5)


def test_dr_grpo_drops_the_std():
    adv = grpo_advantages(torch.tensor([1.0, 0, 0, 0]), torch.tensor([0, 0, 0, 0]),
                          norm_by_std=False)
    assert torch.allclose(adv, torch.tensor([0.75, -0.25, -0.25, -0.25]))


def test_zero_variance_groups_give_zero_advantage_and_groups_are_independent():
    rewards = torch.tensor([1.0, 1, 1, 0, 0, 0, 1, 0, 0, 0])
    group = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    adv = grpo_advantages(rewards, group)
    assert torch.equal(adv[:6], torch.zeros(6))
    assert torch.allclose(adv[6:], torch.tensor([1.5, -0.5, -0.5, -0.5]), atol=1e-5)


def test_token_mean_equals_hand_sum_and_differs_from_sequence_mean():
    # Two sequences of lengths 2 and 6, per-token losses [1, 1] and [0] * 6 (spec section 4).
    mask = torch.tensor([[1.0] * 2 + [0] * 4, [1.0] * 6])
    loss = torch.tensor([[1.0] * 2 + [0] * 4, [0.0] * 6])
    assert (aggregation_weights(mask, "token-mean") * loss).sum().item() == 0.25
    assert (aggregation_weights(mask, "seq-mean-token-mean") * loss).sum().item() == 0.5
    # Dr.GRPO: sum over tokens / L_max, mean over sequences: (2 / 8 + 0) / 2
    sum_norm = aggregation_weights(mask, "seq-mean-token-sum-norm", max_len=8)
    assert (sum_norm * loss).sum().item() == 0.125


def test_weights_split_over_ranks_sum_to_the_whole_batch_loss():
    torch.manual_seed(0)
    mask = (torch.rand(8, 10) > 0.3).float()
    loss = torch.randn(8, 10)
    w = aggregation_weights(mask, "token-mean")
    whole = (w * loss).sum()
    halves = (w[:4] * loss[:4]).sum() + (w[4:] * loss[4:]).sum()
    assert torch.allclose(whole, halves)
    assert torch.allclose(whole, (mask * loss).sum() / mask.sum())


def test_clip_takes_the_pessimistic_branch():
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))
    old = torch.zeros(1, 3)
    adv = torch.tensor([[1.0, -1.0, 1.0]])
    loss, clipped = clipped_policy_loss(logp, old, adv, clip_low=0.2, clip_high=0.28)
    # ratio 1.5 > 1.28 with A>0: clipped to 1.28; ratio 0.5 < 0.8 with A<0: clipped to 0.8
    assert torch.allclose(loss, torch.tensor([[-1.28, 0.8, -1.1]]))
    assert clipped.tolist() == [[True, True, False]]


def test_kl_estimators():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.0, -1.5])
    assert torch.allclose(kl_estimate(logp, logp, "k3"), torch.zeros(2))
    k3 = kl_estimate(logp, ref, "k3")
    assert (k3 >= 0).all() and k3[1] > 0
    assert torch.allclose(kl_estimate(logp, ref, "k1"), torch.tensor([0.0, -0.5]))
    assert torch.allclose(kl_estimate(logp, ref, "k2"), torch.tensor([0.0, 0.125]))


def _sample(group, reward, length, flags=None):
    return Sample(prompt_id=group, group_id=group, prompt_ids=[5, 6], response_ids=[7] * length,
                  behaviour_logprobs=[-1.0] * length, policy_version=0, reward=reward,
                  flags=flags or {})


def test_train_batch_broadcasts_advantages_and_masks_flagged_samples():
    samples = [_sample("a", 1.0, 2), _sample("a", 0.0, 3),
               _sample("b", 1.0, 1, flags={"judge": "timeout"}), _sample("b", 0.0, 2)]
    batch = build_train_batch(samples, pad_id=0, estimator="grpo",
                              estimator_options={"norm_by_std": True},
                              loss_aggregation="token-mean", mini_batch_size=2,
                              max_new_tokens=4, exclude_flagged=True)
    adv, w = batch.extras["advantages"], batch.extras["loss_weights"]
    assert adv.shape == (4, 3)
    assert torch.allclose(adv[0, :2], torch.full((2,), 0.7071), atol=1e-4)
    assert adv[0, 2] == 0  # padding carries no advantage
    assert w[2].sum() == 0  # the flagged sample gets no gradient
    # each mini-batch's weights sum to one (token-mean)
    assert torch.allclose(w[:2].sum(), torch.tensor(1.0))
    assert torch.allclose(w[2:].sum(), torch.tensor(1.0))
