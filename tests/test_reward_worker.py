"""A reward function that raises, hangs or returns garbage flags samples; the run goes on."""
import time

import pytest

from actors.reward import RewardWorker, reward_metrics
from core.records import Sample


def _samples(n=4, groups=2):
    return [Sample(prompt_id=f"p{i % groups}", group_id=f"g{i % groups}", prompt_ids=[1],
                   response_ids=[2] * (i + 1), behaviour_logprobs=[0.0] * (i + 1),
                   policy_version=0, prompt_text="1+1=", response_text="1+1=2;#2", answer=2)
            for i in range(n)]


def test_sources_are_kept_apart_and_combined_by_weight():
    worker = RewardWorker([
        {"name": "correct", "fn": "toy_exact", "weight": 1.0},
        {"name": "length", "fn": "tests.reward_fns.length_bonus", "weight": 0.5,
         "kwargs": {"per_token": 0.1}},
    ])
    out = worker.score(_samples())
    assert [s.rewards["correct"] for s in out] == [1.0] * 4
    assert [round(s.rewards["length"], 6) for s in out] == [0.1, 0.2, 0.3, 0.4]
    assert [round(s.reward, 6) for s in out] == [1.05, 1.1, 1.15, 1.2]


def test_group_scope_source_sees_whole_groups():
    worker = RewardWorker([{"name": "rank", "fn": "tests.reward_fns.group_rank", "scope": "group"}])
    out = worker.score(_samples(6, groups=2))
    # group g0 holds lengths 1, 3, 5 and group g1 lengths 2, 4, 6: ranks 0, 1, 2 in each
    assert [s.rewards["rank"] for s in out] == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0]


def test_raising_source_flags_every_sample_without_stopping():
    worker = RewardWorker([
        {"name": "correct", "fn": "toy_exact"},
        {"name": "broken", "fn": "tests.reward_fns.raises", "failure_value": -1.0},
    ])
    out = worker.score(_samples())
    assert all(s.flags["broken"].startswith("RuntimeError: verifier crashed") for s in out)
    assert all(s.rewards["broken"] == -1.0 and s.rewards["correct"] == 1.0 for s in out)
    m = reward_metrics(out, ["correct", "broken"])
    assert m["reward/flagged/broken"] == 4 and m["reward/flagged/correct"] == 0


def test_hanging_source_times_out_and_the_worker_keeps_serving():
    worker = RewardWorker([{"name": "slow", "fn": "tests.reward_fns.hangs", "timeout_s": 0.3}],
                          threads_per_source=2)
    start = time.monotonic()
    out = worker.score(_samples(4))
    assert time.monotonic() - start < 5
    assert all(s.flags["slow"] == "timeout after 0.3s" for s in out)
    assert all(s.reward == 0.0 for s in out)
    # the next call gets fresh threads instead of queueing behind the hung ones
    start = time.monotonic()
    worker.score(_samples(2))
    assert time.monotonic() - start < 2


def test_non_finite_score_is_flagged():
    out = RewardWorker([{"name": "nan", "fn": "tests.reward_fns.not_a_number"}]).score(_samples(2))
    assert all("expected finite numbers" in s.flags["nan"] for s in out)


def test_gates_and_custom_combination():
    worker = RewardWorker([
        {"name": "correct", "fn": "toy_exact"},
        {"name": "length", "fn": "tests.reward_fns.length_bonus", "weight": 1.0,
         "gate": {"source": "correct", "min": 1.0}},
    ])
    right, wrong = _samples(2)
    wrong.response_text = "1+1=3;#3"
    out = worker.score([right, wrong])
    assert out[0].reward == pytest.approx(1.1) and out[1].reward == 0.0   # gate closed
    assert out[1].rewards["length"] == pytest.approx(0.2)                  # still logged
    product = RewardWorker([{"name": "correct", "fn": "toy_exact"},
                            {"name": "length", "fn": "tests.reward_fns.length_bonus"}],
                           combine="tests.reward_fns.product")
    assert product.score(_samples(2))[1].reward == pytest.approx(0.2)
