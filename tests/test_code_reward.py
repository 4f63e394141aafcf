"""The code reward through the reward worker: extraction, sandboxed tests, partial credit."""
from actors.reward import RewardWorker
from core.records import Sample
from rewards.code import extract_code

TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4"]


def _sample(response, group="g"):
    return Sample(prompt_id=group, group_id=group, prompt_ids=[1], response_ids=[2],
                  behaviour_logprobs=[0.0], policy_version=0, response_text=response, answer=TESTS)


def test_extract_code_takes_the_last_fenced_block():
    text = "first\n```python\nx = 1\n```\nthen\n```\ndef add(a, b): return a + b\n```\n"
    assert extract_code(text) == "def add(a, b): return a + b\n"
    assert extract_code("def f(): pass") == "def f(): pass"


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
