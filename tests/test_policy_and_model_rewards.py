"""Policy-coupled rewards (scored with the sampling weights on the rollout worker) and the
scalar reward model / Cooper co-training, on a real tiny model."""
import math

import pytest
import torch

from actors.rollout import HFEngine, RolloutWorker
from core.models import build_tiny_policy
from core.records import Prompt, Sample, SamplingParams
from rewards.policy_rewards import RLPR, LaSeR, certainty_vote
from rewards.reward_model import Cooper, RewardModelScore
from rewards.self_rewards import self_certainty_from_logits
from tasks.toy_arith import ToyArithmetic

ARCH = {"model_type": "qwen2", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 1, "intermediate_size": 64, "max_position_embeddings": 128}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return str(build_tiny_policy(tmp_path_factory.mktemp("tiny") / "policy", ARCH, seed=0))


@pytest.fixture(scope="module")
def engine(tiny):
    return HFEngine(tiny, max_batch_prompts=8)


def _samples(engine, n=4):
    prompts = [Prompt(f"p{i}", f"{i + 3}+{i}=", i + 3 + i) for i in range(2)]
    return engine.generate(prompts, SamplingParams(n=n, temperature=1.0, max_new_tokens=12, seed=0))


def test_token_logprobs_match_the_behaviour_logprobs_of_sampling(engine):
    samples = _samples(engine)
    scored = engine.token_logprobs([s.prompt_ids for s in samples], [s.response_ids for s in samples])
    for s, lp in zip(samples, scored):
        assert lp == pytest.approx(s.behaviour_logprobs, abs=1e-4)


def test_self_certainty_matches_the_definition(engine):
    s = _samples(engine)[0]
    ids = torch.tensor([s.prompt_ids + s.response_ids])
    logits = engine.model(input_ids=ids).logits[0].float()
    P, n = len(s.prompt_ids), len(s.response_ids)
    expected = self_certainty_from_logits(logits[P - 1:P - 1 + n])
    assert engine.self_certainty([s])[0] == pytest.approx(expected, abs=1e-5)
    assert expected > 0


class FixedPolicy:
    """A PolicyScorer whose log-probs are given: the RLPR worked example."""
    def __init__(self, tokenizer, after_reasoning, alone):
        self.tokenizer, self.after, self.alone = tokenizer, after_reasoning, alone

    def token_logprobs(self, prefixes, targets):
        # the baseline call's prefixes are the bare prompt + nothing
        return [self.after if len(p) > 3 else self.alone for p in prefixes]


def test_rlpr_worked_example(engine):
    policy = FixedPolicy(engine.tokenizer, [math.log(0.9), math.log(0.8), math.log(0.7)],
                         [math.log(0.5), math.log(0.6), math.log(0.4)])
    rlpr = RLPR(open_tag="#", close_tag="", answer_space=False, require_think=False)
    good = Sample("p", "g", [5, 6, 7], [], [], 0, prompt_text="3+4=",
                  response_text="3+4=7;#7", answer=7)
    bad = Sample("p", "g", [5, 6, 7], [], [], 0, prompt_text="3+4=",
                 response_text="no answer", answer=7)
    assert rlpr([good, bad], policy) == pytest.approx([0.37, 0.9 * 0.3])   # format 1 / 0
    policy.after, policy.alone = policy.alone, policy.after                # scoreB < scoreA
    rlpr.baselines.clear()
    assert rlpr([good], policy) == pytest.approx([0.1])


def test_policy_sources_run_on_the_rollout_worker_with_the_sampling_weights(tiny):
    sources = [{"name": "correct", "fn": "toy_exact"},
               {"name": "certainty", "fn": "self_certainty", "scope": "batch", "runs_on": "policy"},
               {"name": "self_verify", "fn": "laser", "scope": "batch", "runs_on": "policy",
                "kwargs": {"token": "@", "c_ref": None}},
               {"name": "rlpr", "fn": "rlpr", "scope": "batch", "runs_on": "policy",
                "kwargs": {"open_tag": "#", "close_tag": "", "answer_space": False,
                           "require_think": False}}]
    worker = RolloutWorker("hf", tiny, reward_sources=sources, max_batch_prompts=8)
    prompts = [Prompt(f"p{i}", f"{i}+{i}=", 2 * i) for i in range(3)]
    samples = worker.generate(prompts, SamplingParams(n=2, max_new_tokens=10, seed=1))
    for s in samples:
        assert {"certainty", "self_verify", "rlpr"} <= set(s.rewards) and not s.flags
        assert "correct" not in s.rewards            # that one runs on the reward worker
    # LaSeR's c_ref measured on this first batch: the batch's self-rewards average to 0
    assert sum(s.rewards["self_verify"] for s in samples) == pytest.approx(0.0, abs=1e-6)
    assert worker.state_dict()["self_verify"]["c_ref"] < 0
    assert len(worker.state_dict()["rlpr"]["baselines"]) == 3
    votes = certainty_vote(samples[:2], "toy", certainty_source="certainty")
    assert sorted(set(votes)) in ([0.0, 1.0], [1.0], [0.0])


def test_laser_worked_example():
    class OneToken:
        class tokenizer:
            unk_token_id = 2
            convert_tokens_to_ids = staticmethod(lambda t: 86)
        def token_logprobs(self, prefixes, targets):
            return [[-13.5], [-21.0]]
    s = Sample("p", "g", [1], [2], [0.0], 0)
    assert LaSeR("@", c_ref=-23.0)([s, s], OneToken()) == pytest.approx([0.95, 0.20])


def _toy_samples(count=8):
    task = ToyArithmetic(1, 2, 2, seed=0)
    out = []
    for i in range(count):
        p = task.problem("train", i)
        s = Sample(p.prompt_id, p.prompt_id, [], [], [], 0, prompt_text=p.prompt,
                   response_text=p.solution, answer=p.answer, metadata={"solution": p.solution})
        s.rewards["correct"] = 1.0
        out.append(s)
    return out


def test_reward_model_scores_and_cooper_learns_from_verified_pairs(tiny):
    samples = _toy_samples()
    plain = RewardModelScore(tiny, sigmoid=True)(samples)
    assert len(plain) == 8 and all(0 < x < 1 for x in plain)
    # A random tiny RM, plain template. lr 1e-2 made the fit chaotic: the loss spiked to 1.58
    # with 1 torch thread and fell with 2. At 1e-3 x 50 steps the loss fell by 0.39-0.69
    # (accuracy >= 0.75) over 60 head inits, with 1 and 2 threads; the seed fixes the head.
    cooper = Cooper(tiny, "toy_exact", negatives="tasks.toy_arith.corrupt", lr=1e-3, seed=0,
                    template="{response}")
    first = cooper.update(samples)
    assert first["rm_pairs"] == 8                           # one pair per group with a positive
    for _ in range(50):     # the same negatives each time: the RM must fit these pairs
        cooper.rng.seed(0)
        last = cooper.update(samples)
    assert last["rm_loss"] < first["rm_loss"] - 0.2 and last["rm_pair_accuracy"] >= 0.75
    state = cooper.state_dict()
    fresh = Cooper(tiny, "toy_exact", negatives="tasks.toy_arith.corrupt", lr=1e-3, seed=0,
                    template="{response}")
    fresh.load_state_dict(state)
    assert fresh([samples[0]]) == pytest.approx(cooper([samples[0]]), abs=1e-6)
    # no verified positive in a group -> no pair, no update
    for s in samples:
        s.rewards["correct"] = 0.0
    assert cooper.update(samples) == {}


def test_cooper_reward_is_the_sigmoid_of_the_logit():
    assert torch.sigmoid(torch.tensor(1.386)).item() == pytest.approx(0.8, abs=1e-4)


def test_cooper_group_negatives_and_no_learning_from_held_out_samples(tiny):
    from actors.reward import RewardWorker
    samples = _toy_samples(4)
    for s in samples[1::2]:              # pairs of a right and a wrong response per group
        s.group_id = samples[0].group_id if s is samples[1] else samples[2].group_id
        s.response_text, s.rewards["correct"] = "1+1=2;#2", 0.0
    cooper = Cooper(tiny, "toy_exact", negatives="group", lr=1e-2, seed=0, template="{response}")
    assert cooper.update(samples)["rm_pairs"] == 2          # each group's rejected response
    worker = RewardWorker([{"name": "cooper", "fn": "cooper", "scope": "batch", "timeout_s": 60,
                            "kwargs": {"path": tiny, "verifier": "toy_exact", "negatives": "group", "template": "{response}"}}])
    rm = worker.functions["cooper"]
    worker.score(samples, learn=False)   # held-out evaluation: scored, not learned from
    assert rm.updates == 0
    worker.score(samples)
    assert rm.updates == 1

