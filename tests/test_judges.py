"""Judge methods: the parsing and aggregation rules against the worked examples of
shared/methods/rewards.md, and each method against a real judge served over HTTP."""
import math

import pytest

from rewards.judges import (JudgeOutputError, brpo_rewards, first_error_to_steps, grm_vote,
                            parse_grm_scores, parse_self_score, parse_step_set, rubric_score,
                            two_token_probability, vote_steps, yes_no_margin)


def test_grm_voting_worked_example():
    # Two responses over k = 3 samples: (7,5), (8,8), (6,4) -> S* = (21, 17).
    samples = [parse_grm_scores(f"Scores: \\boxed{{{a}, {b}}}", 2) for a, b in [(7, 5), (8, 8), (6, 4)]]
    assert grm_vote(samples) == [21, 17]
    assert parse_grm_scores("Scores: \\boxed{11}", 1) is None      # out of range
    assert parse_grm_scores("no box here", 1) is None
    with pytest.raises(JudgeOutputError):
        grm_vote([None, None])


def test_brpo_worked_example():
    # G = 4, ref = o_3: o_1 wins both orders, o_2 one order only, o_4 loses both.
    assert brpo_rewards(2, [True, False, None, False]) == [1.0, -1.0, 0.0, -1.0]


def test_rlbff_and_soft_verifier_worked_examples():
    # Logits Yes = 2.0, No = -1.0 -> r = 3.0 (log-softmax keeps differences).
    z = math.log(math.exp(2) + math.exp(-1) + 1)
    assert yes_no_margin({"Yes": 2 - z, " No": -1 - z, "Maybe": -z}) == pytest.approx(3.0)
    # Logits '1' = 2.0, '0' = 0.0 -> p = 0.881.
    assert two_token_probability({"1": 2.0 - 5, "0": 0.0 - 5}) == pytest.approx(0.881, abs=1e-3)
    with pytest.raises(JudgeOutputError):
        yes_no_margin({"Maybe": -0.1})


def test_rubric_worked_example():
    assert rubric_score([2, 1, 1], [1.0, 0.5, 0.0]) == pytest.approx(0.625)
    assert rubric_score([2, 1, 1], [0.0, 0.5, 1.0], veto=[True, False, False]) == 0.0
    assert rubric_score([1], [0.5], saturation=2.0) == pytest.approx((1 - math.exp(-1)) / (1 - math.exp(-2)))
    assert rubric_score([1, 1], [1.0, 0.0], shaping=2.0) == pytest.approx(0.25)


def test_self_score_parse():
    assert parse_self_score("thinking... Score: 85") == pytest.approx(0.85)
    with pytest.raises(JudgeOutputError):
        parse_self_score("I would rate it highly")


def test_capo_voting_worked_example():
    # k = 4 critiques on a 3-step response flag {2}, {2,3}, {2}, {}.
    critiques = [parse_step_set(t, 3) for t in ("\\boxed{2}", "\\boxed{2, 3}", "\\boxed{2}", "\\boxed{}")]
    assert critiques == [{2}, {2, 3}, {2}, set()]
    assert vote_steps(critiques, "majority") == {2}
    assert vote_steps(critiques, "intersection") == set()
    assert vote_steps(critiques, "union") == {2, 3}


def test_first_error_steps():
    assert first_error_to_steps(3, 5) == [1, 1, 0, 0, 0]
    assert first_error_to_steps(-1, 3) == [1, 1, 1]
    assert first_error_to_steps(None, 2) == [1, 1]     # unparsed: not flawed (FAPO)


# --- end to end: judges served by scripts/serve.py over real HTTP ---------------------------

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from omegaconf import OmegaConf  # noqa: E402

from orchestrator.main import run  # noqa: E402
from tests.conftest import REPO, compose  # noqa: E402


def _serve(model_dir, *extra):
    proc = subprocess.Popen([sys.executable, "scripts/serve.py", "--model", str(model_dir),
                             "--port", "0", *extra], cwd=REPO, stdout=subprocess.PIPE, text=True)
    url = json.loads(proc.stdout.readline())["url"]
    return proc, url


@pytest.fixture(scope="module")
def judge_model(tmp_path_factory):
    from core.models import build_tiny_policy
    return build_tiny_policy(tmp_path_factory.mktemp("judge") / "tiny", dict(
        model_type="qwen2", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=64, max_position_embeddings=1024,
        tie_word_embeddings=True), seed=0)


@pytest.fixture(scope="module")
def judges(judge_model):
    model = judge_model
    fast, fast_url = _serve(model)
    slow, slow_url = _serve(model, "--latency-s", "3")
    yield fast_url, slow_url
    for proc in (fast, slow):
        proc.terminate()
        proc.wait()


def test_pipeline_with_served_judges_timeouts_and_garbage(tmp_path, judges):
    fast, slow = judges
    cfg = compose(tmp_path, "cluster=inline", "eval.num_prompts=4")
    OmegaConf.update(cfg, "reward.sources", [
        {"name": "correct", "fn": "toy_exact", "weight": 1.0},
        # a real probability from the served model's logits: always parses
        {"name": "soft", "fn": "soft_verifier", "weight": 0.5, "timeout_s": 60,
         "kwargs": {"url": fast, "top_k": 100}},   # the whole character vocabulary
        # the tiny model never writes "\boxed{score}": every sample is flagged, none crashes
        {"name": "garbage", "fn": "grm_pointwise", "weight": 0.0, "timeout_s": 60,
         "kwargs": {"url": fast, "k": 2, "max_tokens": 16}},
        # a judge slower than the client's timeout: flagged as timed out
        {"name": "slow", "fn": "soft_verifier", "weight": 0.0, "timeout_s": 30,
         "kwargs": {"url": slow, "request_timeout_s": 0.5, "retries": 0, "top_k": 100}},
    ], force_add=True)
    summary = run(cfg)
    assert summary["steps"] == 2
    rows = [json.loads(l) for l in (tmp_path / "outputs/toy_arith/grpo-seed0/metrics.jsonl")
            .read_text().splitlines()]
    trained = [r for r in rows if "reward/combined" in r]
    for r in trained:
        assert 0.0 < r["reward/soft"] < 1.0 and r["reward/flagged/soft"] == 0
        assert r["reward/flagged/garbage"] == 16
        assert r["reward/flagged/slow"] == 16


def test_cooper_negatives_from_a_served_assistant(judges, judge_model):
    """Cooper's `negatives: assistant`: an LLM over HTTP writes the wrong answers; each that the
    verifier rejects makes a pair and the RM takes a step on them."""
    from core.records import Sample
    from rewards.reward_model import Cooper
    from tasks.toy_arith import ToyArithmetic
    fast, _ = judges
    samples = []
    for i in range(4):
        p = ToyArithmetic(1, 2, 2, seed=0).problem("train", i)
        s = Sample(p.prompt_id, p.prompt_id, [], [], [], 0, prompt_text=p.prompt,
                   response_text=p.solution, answer=p.answer)
        s.rewards["correct"] = 1.0
        samples.append(s)
    cooper = Cooper(judge_model, "toy_exact", negatives="assistant", assistant_url=fast, lr=1e-3,
                    template="{response}")
    stats = cooper.update(samples)
    assert stats["rm_pairs"] == 4 and math.isfinite(stats["rm_loss"])


def test_a_given_judge_url_is_used_and_nothing_is_served(tmp_path):
    from orchestrator.judge_server import sources_using_judge, start_judge
    cfg = compose(tmp_path, "reward=soft_verifier", "judge.url=http://judge.example:8000/v1")
    assert sources_using_judge(cfg) == ["soft"]
    assert start_judge(cfg, "unused", "unused") is None
    assert cfg.reward.sources[1].kwargs.url == "http://judge.example:8000/v1"
    assert sources_using_judge(compose(tmp_path, "reward=toy")) == []
