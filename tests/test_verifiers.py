"""Rule verifiers: math-verify on boxed answers, LaTeX, numbers and sets; exact, regex, format."""
import pytest

from actors.reward import RewardWorker
from core.records import Sample
from rewards.verifiers import exact_match, format_check, last_boxed, math_verify, regex_match


def _s(response, answer):
    return Sample(prompt_id="p", group_id="g", prompt_ids=[1], response_ids=[2],
                  behaviour_logprobs=[0.0], policy_version=0, response_text=response, answer=answer)


@pytest.mark.parametrize("response, answer, expected", [
    ("so the answer is \\boxed{\\frac{1}{2}}", "0.5", 1.0),
    ("\\boxed{0.5}", "\\frac{1}{2}", 1.0),
    ("We get \\boxed{\\{2, 1\\}}", "\\{1,2\\}", 1.0),
    ("The total is 1,000.", "1000", 1.0),
    ("\\boxed{(x+1)^2}", "x^2+2x+1", 1.0),
    ("\\boxed{3}", "4", 0.0),
    ("I don't know", "4", 0.0),
    ("\\boxed{[0, 1)}", "[0,1)", 1.0),
])
def test_math_verify(response, answer, expected):
    assert math_verify(_s(response, answer)) == expected


def test_math_verify_reads_the_answer_after_a_marker():
    # the toy scratchpad: without the pattern math-verify reads the last step's "6", not "632"
    toy = "7+5=12;4+8+1=13;3+2+1=6;#632"
    assert math_verify(_s(toy, 632)) == 0.0
    assert math_verify(_s(toy, 632), extractor="regex:#([^#]*)$") == 1.0
    assert math_verify(_s("#1/2", "0.5"), extractor="regex:#([^#]*)$") == 1.0
    assert math_verify(_s("7+5=12;", 12), extractor="regex:#([^#]*)$") == 0.0   # no answer


def test_math_verify_inside_reward_worker_threads():
    worker = RewardWorker([{"name": "math", "fn": "math_verify", "timeout_s": 30}])
    out = worker.score([_s("\\boxed{\\sqrt{4}}", "2"), _s("\\boxed{5}", "2")])
    assert [s.rewards["math"] for s in out] == [1.0, 0.0] and not any(s.flagged for s in out)


def test_exact_regex_format_and_boxed():
    assert last_boxed("a \\boxed{x} then \\boxed{\\frac{a}{b}}") == "\\frac{a}{b}"
    assert exact_match(_s("  Paris. ", "paris")) == 1.0
    assert exact_match(_s("Paris", "paris"), normalise=False) == 0.0
    assert exact_match(_s("it is \\boxed{Paris}", "paris"), boxed=True) == 1.0
    assert regex_match(_s("Answer: 42", "42"), pattern=r"Answer:\s*(\d+)", group=1) == 1.0
    assert regex_match(_s("no answer", "42"), pattern=r"Answer:") == 0.0
    assert format_check(_s("<think>hmm</think> so \\boxed{4}", "4")) == 1.0
    assert format_check(_s("\\boxed{4}", "4")) == 0.0
