"""SCOPE repair (actors/repair.py): first-error localisation, the repair plan, the repaired
sample's masks, the engine's continuation from a token prefix, and the worker's in-place
substitution of verified repairs."""
import pytest
import torch

from actors.repair import (RepairConfig, RepairWorker, first_error_step, repair_plan,
                           repaired_sample, salvage_point)
from actors.reward import RewardWorker
from actors.rollout import HFEngine
from core.models import load_policy
from core.records import Sample, SamplingParams, Weights, response_diversity
from core.steps import split_steps
from tests.reward_fns import group_rank



def _sample(i: int, steps_scores: list[float], ends: list[int], reward: float = 0.0,
            flags: dict | None = None) -> Sample:
    n = ends[-1] if ends else 4
    return Sample("p", "g", [1, 2], list(range(100, 100 + n)), [-0.5] * n, policy_version=3,
                  response_text=f"r{i}", reward=reward, rewards={"correct": reward},
                  step_scores={"steps": steps_scores}, step_ends=ends,
                  steps=[f"s{k}" for k in range(len(ends))], flags=flags or {})


CFG = RepairConfig(prm_source="steps", verify_source="correct")


# --- pure helpers ---------------------------------------------------------------------------

def test_worked_example_first_error_prefix_and_masks():
    scores = [0.92, 0.88, 0.31, 0.45, 0.20]
    assert first_error_step(scores, 0.5) == 3
    original = _sample(0, scores, [3, 7, 12, 15, 20])
    assert salvage_point(original, CFG) == (3, 7)          # prefix = end of step 2
    # a continuation: the 7 prefix tokens, then 6 guide tokens, re-scored correct
    cont = Sample("p", "g", [1, 2], original.response_ids[:7] + [9] * 6,
                  original.behaviour_logprobs[:7] + [-2.0] * 6, policy_version=8,
                  rewards={"correct": 1.0}, reward=1.0, metadata={"continued_from": 7})
    out = repaired_sample(original, cont, 7)
    assert out.guided_mask == [0] * 7 + [1] * 6
    assert out.metadata["repaired"] is True and out.metadata["first_error_step"] == 3
    assert out.policy_version == 3 and out.group_id == "g" and out.reward == 1.0
    assert out.behaviour_logprobs[:7] == [-0.5] * 7
    # not salvageable: the first step is wrong, or no step is
    assert first_error_step([0.2, 0.9], 0.5) == 1
    assert salvage_point(_sample(1, [0.2, 0.9], [3, 6]), CFG) is None
    assert first_error_step([0.9, 0.5, 0.7], 0.5) is None
    assert salvage_point(_sample(2, [0.9, 0.5, 0.7], [3, 6, 9]), CFG) is None
    with pytest.raises(ValueError, match="prefix"):
        repaired_sample(original, Sample("p", "g", [1, 2], [5] * 13, [0.0] * 13, 8), 7)


def test_worked_example_repaired_group_advantages_and_loss():
    """Spec section 3: a group of 4 that scored [0, 0, 0, 0] (no signal) becomes [1, 0, 0, 0]
    with the repair: A = [1.5, -0.5, -0.5, -0.5] (unbiased std 0.5). The repaired sample's
    on-policy prefix trains with the ratio pi_theta / pi_old times A = +1.5, its guide tokens
    with LUFFY's shaped surrogate A p / (p + gamma)."""
    from learners.losses import LossInputs, ppo
    from learners.prepare import BatchRecipe, build_train_batch
    failed = [_sample(i, [0.92, 0.88, 0.31, 0.45, 0.20], [3, 7, 12, 15, 20]) for i in range(4)]
    cont = Sample("p", "g", [1, 2], failed[0].response_ids[:7] + [9] * 6,
                  failed[0].behaviour_logprobs[:7] + [-2.0] * 6, policy_version=8,
                  rewards={"correct": 1.0}, reward=1.0)
    group = [repaired_sample(failed[0], cont, 7)] + failed[1:]
    batch, _ = build_train_batch(group, BatchRecipe(estimator="grpo", mini_batch_size=4), 0)
    adv = batch.extras["advantages"]
    assert adv[0, :13].tolist() == pytest.approx([1.5] * 13, abs=1e-5)   # std + 1e-6
    assert adv[1:, 0].tolist() == pytest.approx([-0.5] * 3, abs=1e-5)
    assert batch.extras["guided"][0, :13].tolist() == [0.0] * 7 + [1.0] * 6
    # per-token loss with one weight per token: prefix -ratio A, guide tokens -A p / (p + 0.1)
    logprobs = torch.full((4, 20), -0.4)
    weights = torch.zeros(4, 20)
    weights[0, :13] = 1.0
    loss, _ = ppo(LossInputs(logprobs, batch.behaviour_logprobs, adv, weights,
                             batch.response_mask, {"guided": batch.extras["guided"]}))
    ratio, p = torch.exp(torch.tensor(-0.4 + 0.5)), torch.exp(torch.tensor(-0.4))
    clipped = min(float(ratio), 1.2)                        # A > 0: min(rho A, clip(rho) A)
    expected = 7 * -clipped * 1.5 + 6 * -1.5 * float(p / (p + 0.1))
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_repair_plan_longest_prefix_first_skips_flagged_and_correct():
    group = [
        _sample(0, [1, 0, 0], [2, 4, 6]),                          # k*=2, prefix 2
        _sample(1, [1, 1, 1, 0], [2, 4, 6, 8]),                    # k*=4, prefix 6
        _sample(2, [1, 1, 1, 0], [2, 4, 7, 8], flags={"x": "err"}),  # the best, but flagged
        _sample(3, [1, 1, 0], [3, 5, 9]),                          # k*=3, prefix 5
        _sample(4, [1, 1, 1, 0], [2, 4, 6, 8]),                    # ties with 1: later index
        _sample(5, [0, 1, 1], [2, 4, 6]),                          # k*=1: not salvageable
    ]
    one = repair_plan(group, CFG)
    assert one == [(1, 6)]
    three = RepairConfig(prm_source="steps", verify_source="correct",
                         max_repairs_per_group=3)
    assert repair_plan(group, three) == [(1, 6), (4, 6), (3, 5)]
    every = RepairConfig(prm_source="steps", verify_source="correct",
                         max_repairs_per_group=10)
    assert [i for i, _ in repair_plan(group, every)] == [1, 4, 3, 0]
    # a correct response (score 1 on the verify source) is never repaired...
    correct = _sample(6, [1, 1, 1, 0], [2, 4, 6, 8], reward=1.0)
    assert repair_plan([correct], every) == []
    # ...and with only_failed_groups, a group holding one gets no repair at all
    only = RepairConfig(prm_source="steps", verify_source="correct",
                        only_failed_groups=True)
    assert repair_plan(group, only) == [(1, 6)]
    assert repair_plan(group + [correct], only) == []
    # verify_source None: the combined reward decides
    combined = RepairConfig(prm_source="steps")
    assert repair_plan([correct, group[1]], combined) == [(1, 6)]


def test_config_checks_and_diversity():
    with pytest.raises(ValueError, match="attempts"):
        RepairConfig(prm_source="steps", attempts=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        RepairConfig(prm_source="steps", max_new_tokens=0)
    texts = [_sample(i, [1], [1]) for i in range(3)]
    for s, t in zip(texts, ["a", "a", "b"]):
        s.response_text = t
    assert response_diversity(texts) == pytest.approx(2 / 3)
    assert response_diversity(texts[:1]) == 0.0 and response_diversity(texts[:2]) == 0.0


# --- the engine's continuation --------------------------------------------------------------

@pytest.fixture(scope="module")
def engine(tiny_policies):
    return HFEngine(tiny_policies[0], max_batch_prompts=2, step_delimiter=";")


def _toy_sample(tok, prompt: str, response: str, answer: int, version: int = 3) -> Sample:
    ids = tok(response, add_special_tokens=False)["input_ids"]
    steps, ends = split_steps([tok.decode([t]) for t in ids], ";")
    return Sample(prompt, prompt, tok(prompt)["input_ids"], ids, [-0.25 - 0.01 * k for k in range(len(ids))],
                  policy_version=version, prompt_text=prompt, response_text=response,
                  answer=answer, steps=steps, step_ends=ends, metadata={"question": prompt})


@torch.no_grad()
def test_continue_from_keeps_the_prefix_and_records_the_engine_logprobs(engine):
    tok = engine.tokenizer
    originals = [_toy_sample(tok, "347+285=", "7+5=12;4+8+1=13;3+2+1=7;#732", 632),
                 _toy_sample(tok, "12+9=", "2+9=11;1+0+1=3;#31", 21)]
    prefixes = [16, 7]                 # "7+5=12;4+8+1=13;" and "2+9=11;"
    sp = SamplingParams(n=3, temperature=1.0, max_new_tokens=40, seed=5)
    out = engine.continue_from(originals, prefixes, sp)
    assert [s.prompt_id for s in out] == ["347+285="] * 3 + ["12+9="] * 3
    for j, s in enumerate(out):
        o, k = originals[j // 3], prefixes[j // 3]
        assert s.response_ids[:k] == o.response_ids[:k] and len(s.response_ids) > k
        assert s.behaviour_logprobs[:k] == o.behaviour_logprobs[:k]
        assert len(s.behaviour_logprobs) == len(s.response_ids) <= sp.max_new_tokens
        assert s.metadata["continued_from"] == k and s.rewards == {} and s.reward is None
        assert s.policy_version == engine.version and s.group_id == o.group_id
        assert s.prompt_ids == o.prompt_ids and s.answer == o.answer
        assert s.response_text == tok.decode(s.response_ids, skip_special_tokens=True)
        assert s.step_ends == split_steps([tok.decode([t]) for t in s.response_ids], ";")[1]
        assert s.truncated == (s.response_ids[-1] != tok.eos_token_id)
        # the continuation's log-probs are the engine's own, from a teacher-forced pass
        ids = torch.tensor([o.prompt_ids + s.response_ids])
        logp = torch.log_softmax(engine.model(input_ids=ids).logits[0].float(), -1)
        start = len(o.prompt_ids) + k
        expected = logp[start - 1:-1].gather(-1, ids[0, start:, None]).squeeze(-1)
        assert s.behaviour_logprobs[k:] == pytest.approx(expected.tolist(), abs=1e-4)
    # same seed, same continuations
    again = engine.continue_from(originals, prefixes, sp)
    assert [s.response_ids for s in again] == [s.response_ids for s in out]


def test_continue_from_respects_the_token_budget(engine, tiny_policies):
    tok = engine.tokenizer
    o = _toy_sample(tok, "347+285=", "7+5=12;4+8+1=13;3+2+1=7;#732", 632)   # 28 tokens
    sp = SamplingParams(n=2, temperature=1.0, max_new_tokens=20, seed=1)
    for s in engine.continue_from([o, o], [16, 7], sp):
        assert len(s.response_ids) <= 20
    # a random model seldom ends: the budget is what stops it
    tight = engine.continue_from([o], [16], SamplingParams(n=4, max_new_tokens=18, seed=2))
    assert all(len(s.response_ids) <= 18 for s in tight)
    assert any(len(s.response_ids) == 18 and s.truncated for s in tight)
    # no room left: the prefix as it is, truncated
    full = engine.continue_from([o], [16], SamplingParams(n=2, max_new_tokens=16, seed=2))
    assert [s.response_ids for s in full] == [o.response_ids[:16]] * 2
    assert all(s.truncated for s in full)


# --- the worker -----------------------------------------------------------------------------

SOURCES = [
    {"name": "correct", "fn": "tests.reward_fns.accepts_continuations"},
    {"name": "steps", "fn": "toy_step_correct", "weight": 0.0, "granularity": "step"},
    # a group-scope source: candidates are scored inside their group, originals untouched
    {"name": "rank", "fn": "tests.reward_fns.group_rank", "scope": "group", "weight": 0.0},
]


def _scored_group(tok) -> list[Sample]:
    responses = ["7+5=12;4+8+1=13;3+2+1=6;#632",     # correct
                 "7+5=12;4+8+1=13;3+2+1=7;#732",     # k* = 3
                 "7+5=12;4+8+1=14;3+2+1=7;#742",     # k* = 2
                 "7+5=11;4+8+1=13;3+2+1=6;#631",     # k* = 1: not salvageable
                 "7+5=12;4+8+1=13;3+2+1=5;#532"]     # k* = 3 but flagged below
    group = [_toy_sample(tok, "347+285=", r, 632) for r in responses]
    RewardWorker(SOURCES, threads_per_source=1).score(group)
    group[4].flags["steps"] = "judge timed out"
    return group


def test_repair_substitutes_verified_repairs_in_place(tiny_policies):
    worker = RepairWorker(SOURCES, {"prm_source": "steps",
                                    "verify_source": "correct", "attempts": 2},
                          {"model_path": tiny_policies[0], "step_delimiter": ";"})
    tok = worker.engine.tokenizer
    group = _scored_group(tok)
    assert [s.reward for s in group] == [1.0, 0.0, 0.0, 0.0, 0.0]
    before = [(s.response_ids, dict(s.rewards)) for s in group]
    new = load_policy(tiny_policies[1]).state_dict()
    out = worker.repair(group, SamplingParams(n=5, max_new_tokens=40, seed=0),
                        Weights(version=9, state=new))
    assert worker.engine.version == 9                   # guide "policy": the policy's weights
    assert [s is t for s, t in zip(out, group)] == [True, False, True, True, True]
    fixed, original = out[1], group[1]
    assert fixed.response_ids[:16] == original.response_ids[:16]
    assert fixed.response_ids[16:] != original.response_ids[16:]
    assert fixed.guided_mask == [0] * 16 + [1] * (len(fixed.response_ids) - 16)
    assert fixed.behaviour_logprobs[:16] == original.behaviour_logprobs[:16]
    assert fixed.metadata["repaired"] and fixed.metadata["first_error_step"] == 3
    assert fixed.policy_version == 3 and fixed.group_id == original.group_id
    assert fixed.rewards["correct"] == 1.0 and fixed.reward == 1.0
    assert len(fixed.step_scores["steps"]) == len(fixed.steps)
    # scored in its group, in place of the response it repairs (rank by length among 5)
    assert fixed.rewards["rank"] == group_rank(out)[1] and not fixed.flagged
    # the originals (and their scores) are untouched
    assert [(s.response_ids, s.rewards) for s in group] == before
    assert worker.stats() == {"repair/examined": 3.0, "repair/salvageable": 2.0,
                              "repair/attempted": 1.0, "repair/repaired": 1.0,
                              "repair/not_verified": 0.0}
    # counters survive a checkpoint
    again = RepairWorker(SOURCES, {"prm_source": "steps",
                                   "verify_source": "correct"},
                         {"model_path": tiny_policies[0], "step_delimiter": ";"})
    again.load_state_dict(worker.state_dict())
    assert again.stats() == worker.stats()
    assert set(worker.vitals()) == {"busy_s", "pid"} and worker.vitals()["busy_s"] > 0


def test_repair_that_does_not_verify_changes_nothing(tiny_policies):
    """With the real toy verifier, a random tiny guide writes no right sum: nothing is replaced."""
    sources = [{"name": "exact", "fn": "toy_exact"}] + SOURCES[1:]
    worker = RepairWorker(sources, RepairConfig(prm_source="steps",
                                                verify_source="exact", max_repairs_per_group=2),
                          {"model_path": tiny_policies[0], "step_delimiter": ";"})
    group = [_toy_sample(worker.engine.tokenizer, "347+285=", r, 632) for r in
             ["7+5=12;4+8+1=13;3+2+1=7;#732", "7+5=12;4+8+1=14;3+2+1=7;#742"]]
    RewardWorker(sources, threads_per_source=1).score(group)
    out = worker.repair(group, SamplingParams(n=2, max_new_tokens=40, seed=0))
    assert all(a is b for a, b in zip(out, group))
    stats = worker.stats()
    assert stats["repair/attempted"] == 2.0 and stats["repair/not_verified"] == 2.0
    assert stats["repair/repaired"] == 0.0


def test_repair_worker_refuses_configs_it_cannot_serve(tiny_policies):
    opts = {"model_path": tiny_policies[0], "step_delimiter": ";"}
    with pytest.raises(ValueError, match="granularity"):
        RepairWorker(SOURCES, {"prm_source": "correct"}, opts)
    with pytest.raises(ValueError, match="verify_source"):
        RepairWorker(SOURCES, {"prm_source": "steps", "verify_source": "nope"}, opts)
    with pytest.raises(ValueError, match="step_delimiter"):
        RepairWorker(SOURCES, {"prm_source": "steps"}, {"model_path": tiny_policies[0]})
