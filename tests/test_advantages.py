"""Advantage estimators against the worked examples of shared/methods/ and invariants."""
import pytest
import torch

from core.records import Sample
from learners.advantages import AdvantageInputs, group_stats, masked_whiten
from core.registry import lookup


def inputs(rewards, groups=None, lengths=None, sources=None, step_scores=None, step_ends=None,
           metadata=None, values=None, token_rewards=None):
    n = len(rewards)
    groups = groups or [0] * n
    lengths = lengths or [3] * n
    R = max(lengths)
    mask = torch.tensor([[1.0] * L + [0.0] * (R - L) for L in lengths])
    samples = []
    for i in range(n):
        samples.append(Sample(prompt_id=str(groups[i]), group_id=str(groups[i]), prompt_ids=[1],
                              response_ids=[2] * lengths[i], behaviour_logprobs=[0.0] * lengths[i],
                              policy_version=0, reward=rewards[i],
                              rewards={k: v[i] for k, v in (sources or {}).items()},
                              step_scores={k: v[i] for k, v in (step_scores or {}).items()},
                              step_ends=step_ends[i] if step_ends else None,
                              metadata=(metadata[i] if metadata else {})))
    return AdvantageInputs(torch.tensor(rewards, dtype=torch.float), torch.tensor(groups), mask,
                           token_rewards if token_rewards is not None else torch.zeros_like(mask),
                           samples, values)


def adv(name, x, **options):
    return lookup("advantage", name)(x, **options)


def first_token(out):
    return out.advantages[:, 0]


def test_grpo_and_dr_grpo_worked_examples():
    x = inputs([1.0, 0, 0, 0])
    assert torch.allclose(first_token(adv("grpo", x)), torch.tensor([1.5, -0.5, -0.5, -0.5]), atol=1e-5)
    assert torch.allclose(first_token(adv("grpo", x, norm_by_std=False)),
                          torch.tensor([0.75, -0.25, -0.25, -0.25]))


# Every group estimator, with options that put a value v that float32 cannot hold exactly
# (0.1, 0.3, 1/3) into what the estimator centres, for all 16 responses of group 0.
GROUP_CASES = [
    ("grpo", lambda v: {}), ("grpo", lambda v: {"norm_by_std": False}),
    ("rloo", lambda v: {}), ("lite_ppo", lambda v: {}),
    ("rover", lambda v: {}), ("rover", lambda v: {"norm_by_std": True}),
    ("reinforce_pp", lambda v: {"baseline": "group"}),
    ("reinforce_pp", lambda v: {"baseline": "group", "baseline_of": "summed"}),
    *[("weighted_grpo", lambda v, r=r: {"reading": r, "negative_weight": v})   # failures: -v
      for r in ("pooled", "mean_center", "scale_negative")],
    ("fapo", lambda v: {"success_threshold": 0.0, "penalty": v}),   # flawed positives: 1 - v
    ("grpo_s", lambda v: {}),
    ("capo", lambda v: {"success_threshold": 0.0, "whole_weight": v}),   # every token: v
    ("constrained", lambda v: {"constraints": {"c": 0.5}, "multipliers": {"c": 0.3}}),
    ("brpo", lambda v: {}),                     # a group that all beat the reference is dropped
]


@pytest.mark.parametrize("value", [0.1, 0.3, 1 / 3])
@pytest.mark.parametrize("name, options", GROUP_CASES, ids=[
    f"{n}({', '.join(f'{k}={o}' for k, o in f('v').items())})" for n, f in GROUP_CASES])
def test_constant_groups_give_exactly_zero_advantage(name, options, value):
    # group 0: sixteen responses of reward `value`; group 1: sixteen different rewards, so
    # batch statistics (Lite PPO's std, REINFORCE++'s whitening) are not trivial. In float32
    # 16 x 0.1 does not sum to 1.6: GRPO gave |A| = 0.015 here, REINFORCE++-baseline 0.076.
    mixed = [i / 15 for i in range(16)]
    n = 32
    x = inputs([value] * 16 + mixed, groups=[0] * 16 + [1] * 16,
               lengths=[1 + i % 4 for i in range(n)],
               sources={"flawed": [1.0] * n, "hardness": [i / n for i in range(n)],
                        "c": [value] * 16 + mixed,
                        "vs_reference": [1.0] * 16 + [(-1.0, 0.0, 1.0)[i % 3] for i in range(16)]},
               step_scores={"step_errors": [[0.0]] * n},
               step_ends=[[1 + i % 4] for i in range(n)])
    out = adv(name, x, **options(value))
    effective = out.advantages if out.keep is None else out.advantages * out.keep[:, None]
    assert torch.equal(effective[:16], torch.zeros(16, 4)), effective[:16].abs().max()
    assert effective[16:].abs().sum() > 0   # the other group still learns


def test_constant_group_cases_cover_every_group_estimator():
    from core.registry import names
    from learners.advantages import declared
    group = {n for n in names("advantage")
             if declared(lookup("advantage", n), "group_baseline", {"baseline": "group"})}
    assert group == {name for name, _ in GROUP_CASES}


def test_equal_returns_whiten_to_zero_and_rounding_noise_stays_small():
    for v in (0.1, 0.3, 1 / 3):
        x = inputs([v] * 5, groups=list(range(5)), lengths=[1, 2, 3, 4, 2])   # one batch
        assert torch.equal(adv("reinforce_pp", x).advantages, torch.zeros(5, 4))
        zero_critic = inputs([v] * 5, groups=list(range(5)), lengths=[1, 2, 3, 4, 2],
                             values=torch.zeros(5, 4))
        assert torch.equal(adv("gae", zero_critic, lam=1.0).advantages, torch.zeros(5, 4))
    # 1.0 and the next float32 up (1 + 1.2e-7): (x - m) / (std + 1e-8) gave +-0.86; with
    # rsqrt(var + 1e-8) the spread of 6e-8 is scaled by at most 1e4.
    one = torch.tensor(1.0)
    noisy = torch.stack([one, torch.nextafter(one, torch.tensor(2.0))] * 2)[None]
    assert masked_whiten(noisy, torch.ones(1, 4)).abs().max() < 1e-3
    # real spread still whitens to unit variance
    assert masked_whiten(torch.tensor([[0.0, 1.0, 2.0, 3.0]]), torch.ones(1, 4)).std().item() \
        == pytest.approx(1.0, abs=1e-6)


def test_kl_in_reward_is_summed_into_scalar_rewards():
    # Two 2-token responses, rewards 1 and 0; k1 KL per token 0.5 on response 1 (behaviour
    # log-probs 0, reference -0.5), 0 on response 2. With coef 0.5 the summed penalty is
    # 0.5 * (0.5 + 0.5) = 0.5, so the scalar rewards become [0.5, 0]:
    # Dr.GRPO A = [0.25, -0.25] (without KL [0.5, -0.5]); RLOO A = [0.5, -0.5] (without: [1, -1]).
    from learners.prepare import BatchRecipe, build_train_batch
    ref = {"ref_logprobs": torch.tensor([[-0.5, -0.5], [0.0, 0.0]])}
    for name, options, expected in (("grpo", {"norm_by_std": False}, [0.25, -0.25]),
                                    ("rloo", {}, [0.5, -0.5])):
        recipe = BatchRecipe(estimator=name, estimator_options=options, mini_batch_size=2,
                             kl_in_reward_coef=0.5, kl_estimator="k1")
        batch, metrics = build_train_batch(inputs([1.0, 0.0], lengths=[2, 2]).samples, recipe, 0,
                                           ref)
        assert batch.extras["advantages"][:, 0].tolist() == pytest.approx(expected)
        assert torch.equal(batch.extras["advantages"][:, 0], batch.extras["advantages"][:, 1])
        assert metrics["kl_in_reward"] == pytest.approx(0.25)


def test_reinforce_pp_group_baseline_of_outcome_or_summed():
    # One group, two 2-token responses, rewards [1, 0], token reward -0.5 (KL) on response 1's
    # first token.
    kl = torch.tensor([[-0.5, 0.0], [0.0, 0.0]])
    x = inputs([1.0, 0.0], lengths=[2, 2], token_rewards=kl)
    # outcome (OpenRLHF): r - mean r = [0.5, -0.5] on the last token, KL as return-to-go:
    # returns [[0, 0.5], [-0.5, -0.5]]; unbiased batch var 0.6875 / 3, so A = returns * 2.0889
    out = adv("reinforce_pp", x, baseline="group").advantages
    assert out.flatten().tolist() == pytest.approx([0.0, 1.0445, -1.0445, -1.0445], abs=1e-4)
    # summed (verl): summed rewards [0.5, 0] - their mean = [0.25, -0.25] on every token;
    # var 0.25 / 3, so A = +-0.25 * sqrt(12) = +-0.8660
    out = adv("reinforce_pp", x, baseline="group", baseline_of="summed").advantages
    assert out.flatten().tolist() == pytest.approx([0.8660] * 2 + [-0.8660] * 2, abs=1e-4)


def test_advantages_are_broadcast_to_real_tokens_only():
    out = adv("grpo", inputs([1.0, 0.0], lengths=[2, 4]))
    assert out.advantages[0].tolist()[2:] == [0.0, 0.0]
    assert torch.all(out.advantages[1] != 0)


def test_rloo_leaves_one_out():
    out = first_token(adv("rloo", inputs([1.0, 0, 0, 0])))
    assert torch.allclose(out, torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3]))


def test_lite_ppo_uses_group_mean_and_batch_std():
    # Spec section 4: groups [1,1,1,0] and [0,0,0,1]; batch std sqrt(2/7) = 0.5345.
    x = inputs([1.0, 1, 1, 0, 0, 0, 0, 1], groups=[0] * 4 + [1] * 4)
    out = first_token(adv("lite_ppo", x))
    expected = torch.tensor([0.4677] * 3 + [-1.4031] + [-0.4677] * 3 + [1.4031])
    assert torch.allclose(out, expected, atol=1e-4)


def test_psr_nsr_and_w_reinforce_worked_example():
    x = inputs([1.0, 0, 1, 0], groups=[0, 1, 2, 3])
    assert first_token(adv("psr_nsr", x, mode="w")).tolist() == pytest.approx([0.1, -1, 0.1, -1])
    assert first_token(adv("psr_nsr", x, mode="nsr")).tolist() == [0, -1, 0, -1]
    assert first_token(adv("psr_nsr", x, mode="psr")).tolist() == [1, 0, 1, 0]


def test_weighted_grpo_three_readings():
    # Spec section 5: G = 8, q+ with 1/8 successes, q- with 7/8.
    rewards = [1.0] + [0.0] * 7 + [1.0] * 7 + [0.0]
    groups = [0] * 8 + [1] * 8
    pair = [{"pair_id": "p"}] * 16
    x = inputs(rewards, groups=groups, metadata=pair)
    z = first_token(adv("weighted_grpo", x, reading="scale_negative", negative_weight=1.0))
    assert z[0].item() == pytest.approx(7 ** 0.5, abs=1e-4)       # rare success: +2.646
    assert z[1].item() == pytest.approx(-0.378, abs=1e-3)
    assert z[15].item() == pytest.approx(-(7 ** 0.5), abs=1e-4)   # rare failure: -2.646
    # mapping {1, 0} -> {1, -2} leaves per-group z-scores unchanged (before the negative scaling)
    scaled = first_token(adv("weighted_grpo", x, reading="scale_negative", negative_weight=2.0))
    assert scaled[0].item() == pytest.approx(7 ** 0.5, abs=1e-4)
    assert scaled[15].item() == pytest.approx(-2 * 7 ** 0.5, abs=1e-4)
    pooled = first_token(adv("weighted_grpo", x, reading="pooled", negative_weight=2.0))
    assert pooled[0].item() == pytest.approx(1.0, abs=1e-4)
    assert pooled[15].item() == pytest.approx(-1.0, abs=1e-4)
    centred = first_token(adv("weighted_grpo", x, reading="mean_center", negative_weight=2.0))
    assert centred[0].item() == pytest.approx(1 - (1 - 14) / 8)


def test_fapo_flawed_positive_sign_flips_with_the_group():
    # Spec section 8 (mean-centred): warm-up 1 sound, 2 flawed, 5 wrong -> A_fp = +0.5;
    # refinement 5 sound, 2 flawed, 1 wrong -> A_fp = -0.5.
    correct = [1.0, 1, 1] + [0.0] * 5 + [1.0] * 7 + [0.0]
    flawed = [0.0, 1, 1] + [0.0] * 5 + [0.0] * 5 + [1.0, 1] + [0.0]
    x = inputs(correct, groups=[0] * 8 + [1] * 8, sources={"flawed": flawed})
    out = first_token(adv("fapo", x, norm_by_std=False))
    assert out[1].item() == pytest.approx(0.5) and out[13].item() == pytest.approx(-0.5)


def test_grpo_s_difficulty_scaling():
    x = inputs([1.0, 0.0], sources={"hardness": [0.2, 0.6]})
    base = first_token(adv("grpo", x))
    out = first_token(adv("grpo_s", x))
    assert (out / base).tolist() == pytest.approx([0.918, 1.078], abs=1e-3)


def test_brpo_uses_the_reference_comparison_and_filters_skewed_groups():
    x = inputs([0.0] * 8, groups=[0] * 4 + [1] * 4,
               sources={"vs_reference": [1, -1, 0, -1, 1, 1, 0, 1]})
    out = adv("brpo", x)
    assert first_token(out)[:4].tolist() == [1, -1, 0, -1]
    assert out.keep.tolist() == [True] * 4 + [False] * 4   # |3| / 4 = 0.75 > 0.6


def test_capo_token_rewards_and_group_normalisation():
    # Spec section 9: two 2-token responses with token rewards [2, 1] and [0, -1] normalise to
    # [1.162, 0.387, -0.387, -1.162]. Response 1 is correct with step 2 flagged; response 2 is
    # wrong with step 2 flagged.
    x = inputs([1.0, 0.0], lengths=[2, 2], step_scores={"errs": [[0.0, 1.0], [0.0, 1.0]]},
               step_ends=[[1, 2], [1, 2]])
    out = adv("capo", x, critique_source="errs").advantages
    assert out.flatten().tolist() == pytest.approx([1.162, 0.387, -0.387, -1.162], abs=1e-3)


def test_remax_subtracts_the_greedy_reward():
    x = inputs([1.0, 0.0, 1.0], metadata=[{"greedy_reward": 1.0}, {"greedy_reward": 1.0},
                                          {"greedy_reward": 0.0}])
    assert first_token(adv("remax", x)).tolist() == [0.0, -1.0, 1.0]


def test_reinforce_pp_whitens_returns_over_the_batch():
    x = inputs([1.0, 0.0, 0.0, 1.0], lengths=[2, 3, 1, 2])
    out = adv("reinforce_pp", x).advantages
    real = x.mask.bool()
    assert out[real].mean().item() == pytest.approx(0.0, abs=1e-6)
    assert out[real].std().item() == pytest.approx(1.0, abs=1e-4)
    # with KL in the reward the return of a token includes the penalties after it
    kl = torch.zeros_like(x.mask)
    kl[0, 0] = -0.5
    x2 = inputs([1.0, 0.0, 0.0, 1.0], lengths=[2, 3, 1, 2], token_rewards=kl)
    raw = adv("reinforce_pp", x2).advantages
    assert raw[0, 0] < raw[0, 1]


def test_gae_with_a_perfect_critic_gives_zero_advantage():
    lengths = [3, 2]
    rewards = [1.0, 0.0]
    values = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    x = inputs(rewards, lengths=lengths, values=values)
    out = adv("gae", x, gamma=1.0, lam=0.95, whiten=False)
    assert torch.allclose(out.advantages, torch.zeros(2, 3))
    assert torch.allclose(out.returns, values * x.mask)
    # zero critic: advantages are lam-discounted rewards-to-go
    out = adv("gae", inputs(rewards, lengths=lengths, values=torch.zeros(2, 3)), lam=0.5,
              whiten=False)
    assert out.advantages[0].tolist() == pytest.approx([0.25, 0.5, 1.0])


def test_group_stats_unbiased_and_population():
    mean, std = group_stats(torch.tensor([1.0, 0, 0, 0]), torch.tensor([0, 0, 0, 0]))
    assert std[0].item() == pytest.approx(0.5)
    _, pop = group_stats(torch.tensor([1.0, 0, 0, 0]), torch.tensor([0, 0, 0, 0]), unbiased=False)
    assert pop[0].item() == pytest.approx(0.4330, abs=1e-4)


def test_step_scores_become_rewards_on_each_step_end():
    from learners.prepare import step_end_rewards
    s = Sample("p", "g", [1], [2] * 5, [0.0] * 5, 0, step_ends=[2, 5],
               step_scores={"prm": [0.5, 1.0]})
    assert step_end_rewards([s], "prm", 6).tolist() == [[0, 0.5, 0, 0, 1.0, 0]]


def test_overlong_filter_and_flags_mask_the_loss_but_keep_group_statistics():
    from learners.prepare import BatchRecipe, build_train_batch
    x = inputs([1.0, 0.0, 0.0, 0.0])
    samples = x.samples
    samples[1].truncated = True
    samples[2].flags = {"judge": "timeout"}
    batch, _ = build_train_batch(samples, BatchRecipe(mini_batch_size=4, overlong_filter=True), 0)
    assert batch.response_mask.sum(1).tolist() == [3, 0, 0, 3]
    # the group baseline still counts all four rewards: A = 1.5 / -0.5 as without masking
    assert batch.extras["advantages"][:, 0].tolist() == pytest.approx([1.5, 0, 0, -0.5], abs=1e-5)
    assert batch.extras["loss_weights"].sum().item() == pytest.approx(1.0)
