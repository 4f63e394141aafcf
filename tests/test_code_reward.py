"""The code reward through the reward worker: extraction, sandboxed tests, partial credit."""
import pytest

from actors.reward import RewardWorker
from core.records import Sample
from rewards.code import extract_code, program_of

TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4"]


def _sample(response, group="g"):
    return Sample(prompt_id=group, group_id=group, prompt_ids=[1], response_ids=[2],
                  behaviour_logprobs=[0.0], policy_version=0, response_text=response, answer=TESTS)


def test_extract_code_takes_the_last_fenced_block():
    text = "first\n```python\nx = 1\n```\nthen\n```\ndef add(a, b): return a + b\n```\n"
    assert extract_code(text) == "def add(a, b): return a + b\n"
    assert extract_code("def f(): pass") == "def f(): pass"


def test_prefix_prompt_puts_the_prompt_code_before_the_response():
    prompt = 'def add(a, b):\n    """Sum."""\n'
    raw = _sample("    return a + b\n")
    raw.metadata["code_prefix"] = prompt
    assert program_of(raw, "prompt") == prompt + "    return a + b\n"   # continues the body
    fenced = _sample("Sure:\n```python\ndef add(a, b):\n    return b + a\n```")
    fenced.metadata["code_prefix"] = prompt
    assert program_of(fenced, "prompt") == prompt + "\ndef add(a, b):\n    return b + a\n"
    assert program_of(fenced) == "def add(a, b):\n    return b + a\n"   # prefix=none
    with pytest.raises(ValueError, match="code_prefix"):
        program_of(_sample("    return a + b\n"), "prompt")
    with pytest.raises(ValueError, match="prefix must be one of"):
        program_of(raw, "docstring")


def test_code_reward_scores_fractions_and_survives_hostile_code():
    worker = RewardWorker([{"name": "tests", "fn": "code_tests", "timeout_s": 30,
                            "kwargs": {"wall_s": 3, "cpu_s": 2}}])
    samples = worker.score([
        _sample("```python\ndef add(a, b):\n    return a + b\n```"),
        _sample("```python\ndef add(a, b):\n    return a * b if a > 0 else a + b\n```"),
        _sample("```python\nimport os\nos._exit(0)\n```"),
        _sample("```python\nwhile True: pass\n```"),
    ])
    assert [round(s.rewards["tests"], 3) for s in samples] == [1.0, 0.667, 0.0, 0.0]   # add(1, 2) fails, the others pass
    assert samples[3].metadata["sandbox_status"] in ("cpu_limit", "timeout")
    assert not any(s.flagged for s in samples)


def test_an_always_equal_object_scores_nothing_on_the_toy_code_tests():
    """The forgery found on main: f returns an object whose __eq__ always says yes. It scored
    1.0 when the comparison ran in the program's process."""
    from tasks.toy_code import ToyCode
    problem = ToyCode().problem("train", 0)
    forged = ("```python\nclass Yes:\n    def __eq__(self, other): return True\n"
              "def f(x): return Yes()\n```")
    worker = RewardWorker([{"name": "tests", "fn": "code_tests", "timeout_s": 30,
                            "kwargs": {"wall_s": 3, "cpu_s": 2, "partial": False}}])
    honest, fake = worker.score([
        Sample(prompt_id="p", group_id="p", prompt_ids=[1], response_ids=[2], behaviour_logprobs=[0.0],
               policy_version=0, response_text=problem.solution, answer=problem.answer),
        Sample(prompt_id="p", group_id="p", prompt_ids=[1], response_ids=[2], behaviour_logprobs=[0.0],
               policy_version=0, response_text=forged, answer=problem.answer)])
    assert honest.rewards["tests"] == 1.0 and fake.rewards["tests"] == 0.0
    assert "only plain data" in fake.metadata["sandbox_failure"]


def test_stdin_stdout_tests_and_unjudgeable_tests_through_the_worker():
    worker = RewardWorker([{"name": "tests", "fn": "code_tests", "timeout_s": 30,
                            "kwargs": {"wall_s": 3, "cpu_s": 2}}])
    io_tests = [{"input": "3 4\n", "output": "7\n"}, {"input": "10 -2\n", "output": "8\n"}]
    add = _sample("```python\na, b = map(int, input().split())\nprint(a + b)\n```")
    add.answer = io_tests
    unjudgeable = _sample("def add(a, b): return a + b")
    unjudgeable.answer = ["x = add(1, 2)\nassert x == 3"]
    add, unjudgeable = worker.score([add, unjudgeable])
    assert add.rewards["tests"] == 1.0 and not add.flagged
    assert unjudgeable.flagged and unjudgeable.rewards["tests"] == 0.0   # counted, not a crash
    assert "only assert statements" in unjudgeable.flags["tests"]


def test_repeated_programs_in_a_batch_run_once_and_share_their_verdict():
    from rewards.sandbox import default_pool
    worker = RewardWorker([{"name": "tests", "fn": "code_tests", "timeout_s": 30,
                            "kwargs": {"wall_s": 3, "cpu_s": 2}}], threads_per_source=8)
    right = "def add(a, b):\n    return a + b  # shared\n"
    wrong = "def add(a, b):\n    return 2 * b  # shared\n"
    repeats = default_pool().repeats
    runs, shared = repeats.runs, repeats.shared
    samples = worker.score([_sample(right), _sample(wrong), _sample(right), _sample(right),
                            _sample(wrong), _sample(right), _sample(right), _sample(wrong)])
    assert [round(s.rewards["tests"], 3) for s in samples] == [1.0, 0.333, 1.0, 1.0, 0.333, 1.0, 1.0, 0.333]
    assert (repeats.runs - runs, repeats.shared - shared) == (2, 6)
    unshared = RewardWorker([{"name": "tests", "fn": "code_tests", "timeout_s": 30,
                              "kwargs": {"wall_s": 3, "cpu_s": 2, "share_repeats": False}}])
    runs = repeats.runs + repeats.shared
    assert unshared.score([_sample(right)])[0].rewards["tests"] == 1.0
    assert repeats.runs + repeats.shared == runs   # share_repeats=false bypasses the table
