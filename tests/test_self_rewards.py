"""Self-rewarding and label-free methods against the worked examples of
shared/methods/rewards.md (sections 1-5 and 8), plus their invariants."""
import math

import pytest
import torch

from core.records import Sample
from core.laser import (laser_balanced_weights, laser_loss, laser_mixed_advantages,
                        laser_self_reward)
from rewards.self_rewards import (LagrangeMultipliers, StdFilter, answer_of, borda_vote,
                                  borda_votes, char_ngram_embedding, co_reward, co_reward_labels,
                                  cosine_similarity_matrix, evol_rewards, evol_rl,
                                  majority_answer, majority_vote,
                                  repetition_penalty, rlpr_format_ok, rlpr_reward, rlpr_score,
                                  rlpr_splice, self_certainty_from_logits, text_after_think)

EVOL_SIM = [[1, .9, .5, .2, .3], [.9, 1, .7, .1, .2], [.5, .7, 1, .3, .4],
            [.2, .1, .3, 1, .6], [.3, .2, .4, .6, 1]]


def sample(text: str, group: str = "g", **metadata) -> Sample:
    return Sample(prompt_id="p", group_id=group, prompt_ids=[], response_ids=[],
                  behaviour_logprobs=[], policy_version=0, response_text=text, metadata=metadata)


# --- answers and majority vote ---------------------------------------------------------------

def test_answer_of_extractors():
    assert answer_of(sample("7+5=12;4+8+1=13;3+2+1=6;#632"), "toy") == "632"
    assert answer_of(sample("7+5=12;"), "toy") is None
    assert answer_of(sample("#"), "toy") is None
    assert answer_of(sample("so \\boxed{ 3/4 } done"), "boxed") == "3/4"
    assert answer_of(sample("\\boxed{ }"), "boxed") is None
    assert answer_of(sample("no box"), "boxed") is None
    assert answer_of(sample("<think>x</think> tail"), "rewards.self_rewards.text_after_think") == "tail"


def test_majority_answer_ties_and_none():
    assert majority_answer(["3", None, "5", "5", "3"]) == "3"      # tie -> first seen
    assert majority_answer([None, "7", None]) == "7"
    assert majority_answer([None, ""]) is None
    assert majority_answer([]) is None


def test_majority_vote_source_on_toy_samples():
    group = [sample("7+5=12;4+8+1=13;3+2+1=6;#632"), sample("7+5=12;4+8=12;3+2+1=6;#622"),
             sample("7+5=12;4+8+1=13;3+2+1=6;#632"), sample("7+5=12;")]
    assert majority_vote(group, "toy") == [1.0, 0.0, 1.0, 0.0]
    assert majority_vote([sample("no answer")], "toy") == [0.0]


# --- EVOL-RL ---------------------------------------------------------------------------------

def test_evol_worked_example():
    assert evol_rewards([1, 1, 1, 0, 0], EVOL_SIM) == pytest.approx([0.625, 0.5, 1.0, -0.75, -0.75])


def test_evol_bands_singletons_and_invalid():
    rewards = evol_rewards([1, 1, 1, 0, 0, 0], [[1.0 if i == j else 0.1 * (i + j) % 1 for j in range(6)]
                                                for i in range(6)])
    correct, incorrect = rewards[:3], rewards[3:]
    assert min(correct) >= 0.5 > -0.5 >= max(incorrect)
    assert all(0.5 <= r <= 1.0 for r in correct) and all(-1.0 <= r <= -0.5 for r in incorrect)
    # one correct, one incorrect: class-of-one rule
    assert evol_rewards([1, 0], [[1, .4], [.4, 1]]) == [1.0, -0.5]
    # invalid -> -1 and out of the similarity: dropping row 4 leaves response 3 alone
    r = evol_rewards([1, 1, 1, 0, 0], EVOL_SIM, valid=[True, True, True, True, False])
    assert r[3:] == [-0.5, -1.0]
    assert r[:3] == pytest.approx([0.625, 0.5, 1.0])


def test_char_ngram_embedding_is_deterministic_and_normalised():
    e = char_ngram_embedding("7+5=12;4+8+1=13;#632")
    assert len(e) == 512 and math.isclose(sum(v * v for v in e), 1.0)
    assert e == char_ngram_embedding("7+5=12;4+8+1=13;#632")
    assert sum(char_ngram_embedding("")) == 0.0 and sum(char_ngram_embedding("ab")) == 1.0
    sims = cosine_similarity_matrix([e, char_ngram_embedding("zzzz"), [0.0] * 512])
    assert sims[0][0] == pytest.approx(1.0) and sims[2][2] == 0.0
    assert all(0.0 <= x <= 1.0 for row in sims for x in row)
    assert text_after_think("a</think>b</think> c") == " c" and text_after_think("abc") == "abc"


def test_evol_rl_source_on_toy_samples():
    group = [sample("7+5=12;4+8+1=13;3+2+1=6;#632"), sample("ok: 7+5=12;4+8+1=13;3+2+1=6;#632"),
             sample("7+5=12; 4+8+1=13; 3+2+1=6; #632"), sample("7+5=12;4+8=12;3+2=5;#522"),
             sample("7+5=11;4+8=12;3+2=5;#521"), sample("I give up")]
    r = evol_rl(group, "toy")
    assert r[5] == -1.0                                  # no answer: invalid
    assert all(0.5 <= x <= 1.0 for x in r[:3]) and max(r[:3]) == 1.0
    assert all(-1.0 <= x <= -0.5 for x in r[3:5])
    boxed = [sample("<think>a</think> \\boxed{12}"), sample("<think>b</think> \\boxed{x}"),
             sample("<think>c</think> the answer \\boxed{12}")]
    assert evol_rl(boxed, extractor="boxed", require_boxed_digit=True)[1] == -1.0
    assert evol_rl(boxed, extractor="boxed", embedder="rewards.self_rewards.char_ngram_embed")[1] == -0.5


# --- Co-Reward -------------------------------------------------------------------------------

def test_co_reward_worked_example():
    orig, twin = co_reward_labels([5, 5, 3, 5], [5, 3, 3, 3])
    assert orig == [0.0, 0.0, 1.0, 0.0] and twin == [1.0, 0.0, 0.0, 0.0]
    assert co_reward_labels(["5", None], [None, None]) == ([0.0, 0.0], [0.0, 0.0])


def test_co_reward_batch_source():
    batch = [sample(f"#{a}", "g0", pair="q1", view=0) for a in (5, 5, 3, 5)]
    batch += [sample(f"#{a}", "g1", pair="q1", view=1) for a in (5, 3, 3, 3)]
    batch += [sample("#5", "g2", pair="q2", view=0), sample("#5", "g3")]   # no twin, no pair
    batch.insert(2, batch.pop(5))                                          # order must not matter
    # order: o5 o5 t3 o3 o5 t5 t3 t3 | q2 alone | no pair
    assert co_reward(batch, "toy") == [0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]


# --- Self-certainty --------------------------------------------------------------------------

def test_self_certainty_worked_example():
    logits = torch.log(torch.tensor([[0.7, 0.1, 0.1, 0.1]]))
    assert self_certainty_from_logits(logits) == pytest.approx(0.4298, abs=1e-4)
    z = logits[0]
    assert float(torch.logsumexp(z, 0) - z.mean()) == pytest.approx(0.4298 + math.log(4), abs=1e-4)
    # logits are shift-invariant; masked-out rows do not count; chunking changes nothing
    rows = torch.cat([logits + 3.0, torch.randn(5, 4) * 4])
    mask = torch.tensor([1, 0, 0, 0, 0, 0])
    assert self_certainty_from_logits(rows, mask, chunk_rows=2) == pytest.approx(0.4298, abs=1e-4)
    assert self_certainty_from_logits(rows, chunk_rows=4) == pytest.approx(self_certainty_from_logits(rows))


def test_self_certainty_uniform_is_zero():
    assert self_certainty_from_logits(torch.zeros(3, 50)) == pytest.approx(0.0, abs=1e-12)
    assert self_certainty_from_logits(torch.full((2, 7), -1.5)) == pytest.approx(0.0, abs=1e-12)
    assert self_certainty_from_logits(torch.randn(4, 9)) > 0


def test_borda_worked_example():
    sc, ans = [0.9, 0.5, 0.7, 0.1], ["A", "B", "A", "B"]
    assert borda_votes(sc, ans, power=1) == pytest.approx({"A": 7, "B": 3})
    assert borda_votes(sc, ans, power=0.5) == pytest.approx({"A": 3.732, "B": 2.414}, abs=1e-3)
    assert borda_votes(sc, ans, power=0) == {"A": 2.0, "B": 2.0}
    assert borda_vote(sc, ans, power=0.5) == "A"
    assert borda_vote(sc, ["B", None, "A", None], power=1) == "B"    # 4 > 3; None gets nothing
    assert borda_vote(sc, [None] * 4) is None


# --- RLPR ------------------------------------------------------------------------------------

def test_rlpr_worked_example():
    score_b = rlpr_score([math.log(p) for p in (0.9, 0.8, 0.7)])
    score_a = rlpr_score(torch.log(torch.tensor([0.5, 0.6, 0.4])))
    assert score_b == pytest.approx(0.8) and score_a == pytest.approx(0.5)
    assert rlpr_reward(score_b, score_a, True) == pytest.approx(0.37)
    assert rlpr_reward(score_a, score_b, True) == pytest.approx(0.1)
    assert rlpr_reward(score_b, score_a, True, format_coef=-1) == pytest.approx(0.3)
    assert rlpr_reward(score_b, score_a, False, format_coef=-1) == -1.0


def test_rlpr_score_modes():
    lp = [math.log(0.5), math.log(0.8)]
    assert rlpr_score(lp, "mean_log_softmax") == pytest.approx(sum(lp) / 2)
    assert rlpr_score(lp, "exp_sum_log_softmax") == pytest.approx(0.4)
    assert rlpr_score(lp, "exp_mean_log_softmax") == pytest.approx(math.sqrt(0.4))
    assert rlpr_score([]) == 0.0
    with pytest.raises(ValueError):
        rlpr_score(lp, "median")


def test_rlpr_format_and_repetition():
    assert rlpr_format_ok("<think>r</think> <answer>4</answer>")
    assert not rlpr_format_ok("<answer>4</answer><think>r</think>")
    assert not rlpr_format_ok("<think>r</think><answer>4</answer><answer>5</answer>")
    assert rlpr_format_ok("so <answer>4</answer>", think=False)
    words = " ".join(f"w{i}" for i in range(10))
    assert repetition_penalty(" ".join([words] * 10)) == -1.0
    assert repetition_penalty(" ".join([words] * 9)) == 0.0
    assert repetition_penalty("_".join([words.replace(" ", "_")] * 10)) == -1.0
    assert repetition_penalty("a b c") == 0.0


def test_rlpr_splice():
    assert rlpr_splice("<think>r</think>\nso <answer>\n 42</answer>", "7") == (
        "<think>r</think>\nso <answer>\n ", "7", " </answer>")
    assert rlpr_splice("<think>r</think><answer>42</answer>", "7") == (
        "<think>r</think><answer> ", "7", " </answer>")
    assert rlpr_splice("<think>ran out of tok", "7") == ("<think>ran out of tok<answer> ", "7", " </answer>")


def test_std_filter_worked_example():
    group = [0.37, 0.10, 0.64, 0.10]
    flat = [0.5, 0.5, 0.5, 0.55]
    f = StdFilter()
    f.load_state_dict({"ema": 0.2, "history": []})
    assert f.keep([group, flat], step=11) == [True, False]     # 0.2585 >= 0.1 > 0.0289
    assert f.keep([group, flat], step=10) == [True, True]      # before filter_start_step


def test_std_filter_schedule_and_state_round_trip():
    f = StdFilter(ema_start_step=2, filter_start_step=4)
    f.update(1, [[0.0, 1.0]])                                  # before ema_start_step: ignored
    f.update(2, [[0.0, 0.2], [0.0, 0.4]])
    assert f.ema is None and f.keep([[0.0, 0.0]], step=3) == [True]
    f.update(3, [[0.0, 0.6]])                                  # next step filters: EMA starts
    s = lambda d: d / math.sqrt(2)
    assert f.ema == pytest.approx((s(0.3) + s(0.6)) / 2)
    saved = f.state_dict()
    g = StdFilter(ema_start_step=2, filter_start_step=4)
    g.load_state_dict(saved)
    for h in (f, g):
        h.update(4, [[0.0, 1.0], [1.0]])                      # a lone response has no std
    assert f.state_dict() == g.state_dict()
    assert f.ema == pytest.approx(0.99 * (s(0.3) + s(0.6)) / 2 + 0.01 * s(1.0))
    assert f.keep([[0.0, 0.01]], step=5) == [False]


# --- LaSeR -----------------------------------------------------------------------------------

def test_laser_worked_example():
    assert laser_self_reward(-13.5) == pytest.approx(0.95)
    assert laser_self_reward(-21.0) == pytest.approx(0.20)
    assert laser_loss([0.95], [1.0], [False], balanced=False) == pytest.approx(0.0025)
    # one correct and one incorrect: both weights 1, so the MSE terms average
    assert laser_loss([0.95, 0.05], [1.0, 0.0], [False, False]) == pytest.approx(0.0025)
    w = laser_balanced_weights([1] * 3 + [0] * 5, [False] * 8)
    assert w[:3] == pytest.approx([4 / 3] * 3) and w[3:] == pytest.approx([0.8] * 5)


def test_laser_truncated_samples_do_not_count():
    w = laser_balanced_weights([1, 1, 0, 0], [False, True, False, True])
    assert w == [1.0, 0.0, 1.0, 0.0]
    assert laser_loss([0.5, 9.0, 0.5, 9.0], [1, 1, 0, 0], [False, True, False, True]) == pytest.approx(0.125)
    assert laser_balanced_weights([1, 0], [True, True]) == [0.0, 0.0]


def test_laser_mixed_advantages():
    adv = [1.0, -1.0, 1.0, -1.0]
    r_s = [0.9, 0.1, 1.4, -0.3]                      # clamped to [0.9, 0.1, 1.0, 0.0]
    clamped = [0.9, 0.1, 1.0, 0.0]
    mean = sum(clamped) / 4
    std = math.sqrt(sum((x - mean) ** 2 for x in clamped) / 3)
    expected = [0.9 * a + 0.1 * (x - mean) / std for a, x in zip(adv, clamped)]
    assert laser_mixed_advantages(adv, r_s, [False] * 4) == pytest.approx(expected)
    # std of the self-rewards <= T: the verifier advantage is used unchanged
    assert laser_mixed_advantages(adv, [0.5, 0.52, 0.5, 0.51], [False] * 4) == pytest.approx(adv)
    # truncated -> self-reward 0: [0.9, 0, 0.9, 0] normalises to +-0.45 / 0.5196
    out = laser_mixed_advantages(adv, [0.9, 0.9, 0.9, 0.9], [False, True, False, True])
    z = 0.45 / math.sqrt(4 * 0.45 ** 2 / 3)
    assert out == pytest.approx([0.9 + 0.1 * z, -0.9 - 0.1 * z, 0.9 + 0.1 * z, -0.9 - 0.1 * z])


# --- Constrained RLHF ------------------------------------------------------------------------

def test_lagrange_worked_example():
    lm = LagrangeMultipliers({"intent": 0.44, "meteor": 0.238}, init_std=0.0)
    assert lm.values() == {"intent": 0.5, "meteor": 0.5}
    mixed = lm.mix([1.0, 2.0], {"intent": [0.4, 0.0], "meteor": [0.0, -2.0]})
    assert mixed == pytest.approx([1.0 + 0.2, 2.0 - 1.0])
    lm.update({"intent": 0.30, "meteor": 0.30})     # intent unmet, meteor exceeded
    v = lm.values()
    assert v["intent"] > 0.5 and v["meteor"] < 0.5
    t = lm.mix(torch.ones(3, dtype=torch.float32), {"intent": torch.zeros(3), "meteor": torch.zeros(3)})
    assert t.dtype == torch.float32 and torch.allclose(t, torch.full((3,), 2 - sum(v.values()), dtype=torch.float32))


def test_lagrange_equality_and_init():
    lm = LagrangeMultipliers({"a": 0.5}, kind="equality", init_std=0.0)
    assert lm.values() == {"a": 0.0}
    lm.update({"a": 0.2})
    assert lm.values()["a"] > 0.0
    seeded = [LagrangeMultipliers({"a": 0.5, "b": 0.1}, seed=3).values() for _ in range(2)]
    assert seeded[0] == seeded[1] and seeded[0]["a"] != 0.5
    with pytest.raises(ValueError):
        LagrangeMultipliers({"a": 0.5}, kind="box")
    with pytest.raises(KeyError):
        lm.mix([0.0], {})


def test_lagrange_state_round_trip_gives_identical_update():
    a = LagrangeMultipliers({"x": 0.44, "y": 0.238}, seed=1)
    for step in range(3):
        a.update({"x": 0.2 + 0.1 * step, "y": 0.5})
    saved = a.state_dict()
    b = LagrangeMultipliers({"x": 0.44, "y": 0.238}, seed=7)
    b.load_state_dict(saved)
    assert b.values() == a.values()
    for _ in range(2):
        a.update({"x": 0.3, "y": 0.1})
        b.update({"x": 0.3, "y": 0.1})
        assert b.values() == a.values()
    # the saved state is a snapshot, not a view of the live optimizer
    c = LagrangeMultipliers({"x": 0.44, "y": 0.238})
    c.load_state_dict(saved)
    assert c.values() != a.values()
