"""Reward functions that the algorithms read by name: toy oracles, DAPO overlong, BRPO."""
import pytest

from core.records import Sample
from core.steps import split_steps, step_values_to_tokens
from rewards.pairwise import bootstrapped_reference
from rewards.shaping import dapo_overlong
from rewards.toy import toy_flawed, toy_hardness, toy_step_errors


def _sample(response, prompt="347+285=", answer=632, group="g"):
    steps, ends = split_steps(list(response), ";")
    return Sample(prompt_id=group, group_id=group, prompt_ids=[1], response_ids=[2] * len(response),
                  behaviour_logprobs=[0.0] * len(response), policy_version=0, prompt_text=prompt,
                  response_text=response, answer=answer, steps=steps, step_ends=ends)


def test_step_splitting_and_token_mapping():
    steps, ends = split_steps(["7", "+", "5", "=", "1", "2", ";", "#", "6"], ";")
    assert steps == ["7+5=12;", "#6"] and ends == [7, 9]
    # a delimiter spanning two tokens ends the step on its second token
    assert split_steps(["a\n", "\nb"], "\n\n") == (["a\n\nb"], [2])
    assert step_values_to_tokens([2, 4], [1.0, 3.0], 5).tolist() == [1, 1, 3, 3, 0]


def test_toy_step_errors_and_flawed_positive():
    good = _sample("7+5=12;4+8+1=13;3+2+1=6;#632")
    assert toy_step_errors(good) == [0, 0, 0, 0] and toy_flawed(good) == 0
    flawed = _sample("7+5=12;4+8=13;3+2+1=6;#632")        # wrong step, right answer
    assert toy_step_errors(flawed) == [0, 1, 0, 0] and toy_flawed(flawed) == 1
    wrong = _sample("7+5=12;4+8+1=13;3+2+1=6;#631")
    assert toy_step_errors(wrong) == [0, 0, 0, 1] and toy_flawed(wrong) == 0
    assert toy_hardness(flawed) == pytest.approx(1 / 3)


def test_dapo_overlong_worked_example():
    s = _sample("x" * 6144)
    assert dapo_overlong(s, max_len=8192, buffer_len=4096) == pytest.approx(-0.5)
    assert dapo_overlong(_sample("x" * 4000), max_len=8192, buffer_len=4096) == 0.0
    assert dapo_overlong(_sample("x" * 9000), max_len=8192, buffer_len=4096) == -1.0


def test_bootstrapped_reference_scores_against_one_random_member():
    group = [_sample(r) for r in ("7+5=12;#1", "7+5=12;4+8+1=13;#1", "#632", "9;#1")]
    scores = [1 / 3, 2 / 3, 0.0, 0.0]   # toy_steps: fraction of the 3 columns written right
    out = bootstrapped_reference(group, scorer="toy_steps")
    assert out.count(0.0) == 1
    ref = out.index(0.0)
    assert out == [0.0 if i == ref else (1.0 if scores[i] > scores[ref] else -1.0)
                   for i in range(4)]
    assert out == bootstrapped_reference(group, scorer="toy_steps")   # seeded by group id
