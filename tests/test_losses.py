"""Policy losses and aggregation against the worked examples of shared/methods/."""
import math

import pytest
import torch

from core.registry import lookup
from learners.losses import LossInputs, aggregation_weights, kl_estimate
from core.preference_losses import dpo_loss, simpo_loss


def loss_inputs(logprobs, old, adv, weights=None, mask=None, **extras):
    logprobs = torch.as_tensor(logprobs, dtype=torch.float).clone().requires_grad_()
    old, adv = torch.as_tensor(old, dtype=torch.float), torch.as_tensor(adv, dtype=torch.float)
    mask = torch.ones_like(old) if mask is None else torch.as_tensor(mask, dtype=torch.float)
    weights = aggregation_weights(mask, "token-mean") if weights is None else weights
    return LossInputs(logprobs, old, adv, weights, mask, extras)


def test_token_mean_equals_hand_sum_and_differs_from_sequence_mean():
    # Spec section 4: lengths 2 and 6, per-token losses [1, 1] and [0] * 6.
    mask = torch.tensor([[1.0] * 2 + [0] * 4, [1.0] * 6])
    loss = torch.tensor([[1.0] * 2 + [0] * 4, [0.0] * 6])
    assert (aggregation_weights(mask, "token-mean") * loss).sum().item() == 0.25
    assert (aggregation_weights(mask, "seq-mean-token-mean") * loss).sum().item() == 0.5
    sum_norm = aggregation_weights(mask, "seq-mean-token-sum-norm", max_len=8)
    assert (sum_norm * loss).sum().item() == 0.125   # (2 / 8 + 0) / 2


def test_weights_split_over_ranks_add_up_to_the_whole():
    torch.manual_seed(0)
    mask = (torch.rand(8, 10) > 0.3).float()
    loss = torch.randn(8, 10)
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        w = aggregation_weights(mask, mode, max_len=10)
        assert torch.allclose((w * loss).sum(), (w[:4] * loss[:4]).sum() + (w[4:] * loss[4:]).sum())


def test_ppo_clip_higher_takes_the_pessimistic_branch():
    x = loss_inputs(torch.log(torch.tensor([[1.5, 0.5, 1.1]])), torch.zeros(1, 3),
                    [[1.0, -1.0, 1.0]], weights=torch.ones(1, 3))
    loss, stats = lookup("loss", "ppo")(x, clip_low=0.2, clip_high=0.28)
    # ratio 1.5 with A > 0 is clipped to 1.28; ratio 0.5 with A < 0 is clipped to 0.8
    assert loss.item() == pytest.approx(-1.28 + 0.8 - 1.1)
    assert stats["clip_fraction"].tolist() == [[1.0, 1.0, 0.0]]


def test_dual_clip_bounds_negative_advantage_losses():
    x = loss_inputs(torch.log(torch.tensor([[10.0]])), [[0.0]], [[-1.0]], weights=torch.ones(1, 1))
    plain, _ = lookup("loss", "ppo")(x)
    dual, _ = lookup("loss", "ppo")(x, dual_clip=3.0)
    assert plain.item() == pytest.approx(10.0) and dual.item() == pytest.approx(3.0)


def test_guided_tokens_use_the_luffy_shaping_and_on_policy_tokens_the_ratio():
    # SCOPE worked example: repaired sample with A = 1.5; prefix tokens on-policy, suffix guided.
    p = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    x = loss_inputs(torch.log(p), torch.log(p), [[1.5] * 4], weights=torch.ones(1, 4),
                    guided=torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
    loss, _ = lookup("loss", "ppo")(x, guided_gamma=0.1)
    expected = -1.5 * 1.0 * 2 - 1.5 * (0.2 / 0.3) * 2
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    loss.backward()
    grad = x.logprobs.grad[0]
    assert grad[0].item() == pytest.approx(-1.5)                       # d(-rho A)/dlogp = -A
    assert grad[2].item() == pytest.approx(-1.5 * 0.2 * 0.1 / 0.3 ** 2)  # f'(p) p, f = p/(p+g)


def test_w_reinforce_loss_value_from_the_spec():
    # Spec section 6: advantages [0.1, -1, 0.1, -1] on 4 sequences of 10 tokens, ratio 1,
    # token-mean: loss = -(0.1 * 20 - 1 * 20) / 40 = 0.45.
    adv = torch.tensor([0.1, -1, 0.1, -1])[:, None].expand(4, 10)
    x = loss_inputs(torch.zeros(4, 10), torch.zeros(4, 10), adv)
    loss, _ = lookup("loss", "ppo")(x)
    assert loss.item() == pytest.approx(0.45)


def test_gspo_uses_one_ratio_per_sequence():
    logp = torch.tensor([[0.1, -0.1, 0.3]])
    x = loss_inputs(logp, torch.zeros(1, 3), [[1.0] * 3], weights=torch.full((1, 3), 1 / 3))
    loss, stats = lookup("loss", "gspo")(x, clip_low=0.5, clip_high=0.5)
    seq_ratio = math.exp(0.1)
    assert stats["ratio"].tolist()[0] == pytest.approx([seq_ratio] * 3)
    loss.backward()
    assert torch.allclose(x.logprobs.grad, torch.full((1, 3), -seq_ratio / 3))


def test_rover_first_step_loss_and_gradient():
    # Spec section 7: r~ = [0.5, -0.5, -0.5, 0.5]; on-policy Q = 0, V = 0: loss = 0.25 and
    # dL/dlogp = -2 rho r~ / T_tot.
    adv = torch.tensor([0.5, -0.5, -0.5, 0.5])[:, None].expand(4, 2)
    zeros = torch.zeros(4, 2)
    x = loss_inputs(zeros, zeros, adv, mean_logsoftmax=zeros, old_mean_logsoftmax=zeros)
    loss, _ = lookup("loss", "rover")(x, rho=1.0)
    assert loss.item() == pytest.approx(0.25)
    loss.backward()
    assert torch.allclose(x.logprobs.grad, -2 * adv / 8)




def test_pacs_loss_and_gradient_worked_example():
    # Spec section 10: n = 4, rewards [1, 0, 0, 0], beta 1, first update: loss 0.6931 and
    # dL/ds = [-1/3, 1/9, 1/9, 1/9] (s = the summed log-ratio of each response).
    zeros = torch.zeros(4, 1)
    weights = aggregation_weights(torch.ones(4, 1), "seq-mean-token-mean")
    x = loss_inputs(zeros, zeros, zeros, weights=weights,
                    seq_rewards=torch.tensor([1.0, 0, 0, 0]), group=torch.zeros(4))
    loss, _ = lookup("loss", "pacs")(x, beta=1.0)
    assert loss.item() == pytest.approx(0.6931, abs=1e-4)
    loss.backward()
    assert x.logprobs.grad[:, 0].tolist() == pytest.approx([-1 / 3, 1 / 9, 1 / 9, 1 / 9], abs=1e-4)


def test_kl_estimators():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.0, -1.5])
    assert torch.allclose(kl_estimate(logp, logp, "k3"), torch.zeros(2))
    assert (kl_estimate(logp, ref, "k3") >= 0).all()
    assert torch.allclose(kl_estimate(logp, ref, "k1"), torch.tensor([0.0, -0.5]))
    assert torch.allclose(kl_estimate(logp, ref, "k2"), torch.tensor([0.0, 0.125]))


def test_k3_is_clamped_like_verl_low_var_kl():
    # d = log pi - log pi_ref. Unclamped, k3 = e^-d + d - 1 is 3.3e6 at d = -15 (gradient
    # 1 - e^15 = -3.3e6) and 14 at d = +15. Clamped to <= 10, with zero gradient there; inside
    # the bound it is unchanged: at d = -2, e^2 - 3 = 4.389 with gradient 1 - e^2 = -6.389.
    d = torch.tensor([-15.0, 15.0, -2.0], requires_grad=True)
    kl = kl_estimate(d, torch.zeros(3), "k3")
    kl.sum().backward()
    assert kl.tolist() == pytest.approx([10.0, 10.0, math.exp(2) - 3])
    assert d.grad.tolist() == pytest.approx([0.0, 0.0, 1 - math.exp(2)])


def test_simpo_and_dpo_worked_examples():
    # rewards.md section 21: beta 2, gamma 1.6, log pi(y_w) = -20 over 10 tokens,
    # log pi(y_l) = -45 over 15 tokens: margin 0.4, loss 0.5130.
    loss, margin = simpo_loss(torch.tensor([-20.0]), torch.tensor([-45.0]), torch.tensor([10.0]),
                              torch.tensor([15.0]), beta=2.0, gamma=1.6)
    assert margin.item() == pytest.approx(0.4) and loss.item() == pytest.approx(0.5130, abs=1e-4)
    loss, margin = dpo_loss(torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]),
                            torch.tensor([-11.0]), beta=0.1)
    assert margin.item() == pytest.approx(0.2)   # 0.1 * ((-10 + 11) - (-12 + 11))
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.2))), abs=1e-5)


def test_truncated_importance_weights_scale_each_token():
    x = loss_inputs([[0.0, 0.0]], [[0.0, 0.0]], [[1.0, 1.0]], weights=torch.ones(1, 2),
                    tis_weight=torch.tensor([[2.0, 0.5]]))
    loss, _ = lookup("loss", "ppo")(x)
    assert loss.item() == pytest.approx(-2.5)
