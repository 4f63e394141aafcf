"""The rollout decode loop (actors/decode.py): the distribution it samples from, the log-probs
it records, rows leaving the batch as they end, and weights switched mid-response."""
import pytest
import torch
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from actors.decode import sample, warp
from actors.rollout import HFEngine
from core.models import load_policy
from core.records import Prompt, SamplingParams

PROMPTS = [Prompt(f"p{i}", f"{i * 7 + 3}+{i}=", None) for i in range(3)]   # unequal lengths


@pytest.fixture(scope="module")
def engine(tiny_policies):
    return HFEngine(tiny_policies[0], max_batch_prompts=8)


def _teacher_forced(model, prompt_ids: list[int], response: list[int], temperature: float):
    """[len(response), V] log softmax(logits / T) before each response token, from one forward."""
    ids = torch.tensor([prompt_ids + response])
    logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1:-1].float()
    return torch.log_softmax(logits / temperature, -1)


def test_warp_keeps_what_generates_top_k_then_top_p_keeps():
    torch.manual_seed(0)
    logits = torch.randn(64, 50) * 3
    sp = SamplingParams(top_k=20, top_p=0.8)
    expected = TopPLogitsWarper(0.8)(None, TopKLogitsWarper(20)(None, logits.clone()))
    assert torch.equal(warp(logits, sp).isinf(), expected.isinf())
    assert warp(logits, SamplingParams()).isinf().sum() == 0


@torch.no_grad()
def test_recorded_logprobs_are_the_full_distributions_and_tokens_lie_in_the_warped_support(engine):
    sp = SamplingParams(n=4, temperature=0.7, top_p=0.9, top_k=20, max_new_tokens=16, seed=3)
    samples = engine.generate(PROMPTS, sp)
    assert len(samples) == 12 and [s.prompt_id for s in samples[::4]] == ["p0", "p1", "p2"]
    for s in samples:
        logp = _teacher_forced(engine.model, s.prompt_ids, s.response_ids, 0.7)
        picked = logp.gather(-1, torch.tensor(s.response_ids)[:, None]).squeeze(-1)
        assert s.behaviour_logprobs == pytest.approx(picked.tolist(), abs=1e-4)
        support = ~warp(logp, sp).isinf()
        assert support[torch.arange(len(s.response_ids)), s.response_ids].all()
        assert s.truncated == (s.response_ids[-1] != engine.tokenizer.eos_token_id)
        assert s.token_versions is None and s.policy_version == engine.version
    # same seed, same samples (a resumed run replays its steps)
    again = engine.generate(PROMPTS, sp)
    assert [s.response_ids for s in again] == [s.response_ids for s in samples]


@torch.no_grad()
def test_greedy_equals_generate_though_finished_rows_leave_the_batch(engine):
    """Rows that end early are dropped from the KV cache; the rows left go on exactly as in
    Hugging Face generate, which keeps every row to the end."""
    tok, model = engine.tokenizer, engine.model
    enc = tok([p.text for p in PROMPTS], padding=True, return_tensors="pt")
    greedy = SamplingParams(n=1, temperature=0, max_new_tokens=30)
    free = sample(model, enc["input_ids"], enc["attention_mask"], greedy, {tok.eos_token_id})

    def first_at(rows, token):
        return {row.index(token) + 1 if token in row else len(row) for row in rows}
    # an end token that ends the rows at different steps (a random model seldom writes EOS)
    end = next(t for t in free.tokens[0] if len(first_at(free.tokens, t)) > 1)
    got = sample(model, enc["input_ids"], enc["attention_mask"], greedy, {end})
    out = model.generate(**enc, do_sample=False, max_new_tokens=30, pad_token_id=tok.pad_token_id,
                         eos_token_id=end)[:, enc["input_ids"].shape[1]:]
    for row, ids in enumerate(got.tokens):
        assert ids == out[row, :len(ids)].tolist()
        assert got.truncated[row] == (ids[-1] != end)
    assert len({len(ids) for ids in got.tokens}) > 1


@torch.no_grad()
def test_weights_offered_mid_response_sample_the_rest_and_each_token_records_its_version(tiny_policies):
    """Partial rollouts: from the step the new weights arrive, every token is sampled by them
    alone (the prefix is prefilled again), its log-prob recorded under them, and tagged."""
    engine = HFEngine(tiny_policies[0], max_batch_prompts=8)
    new = load_policy(tiny_policies[1]).eval()
    old = load_policy(tiny_policies[0]).eval()
    calls = []

    def version():
        calls.append(1)
        if len(calls) == 4:                         # before the 4th token
            engine.offered = type("W", (), {"version": 7, "fetch": lambda self: new.state_dict()})()
        return engine._weights_version()

    tok = engine.tokenizer
    enc = tok([p.text for p in PROMPTS], padding=True, return_tensors="pt")
    got = sample(engine.model, enc["input_ids"], enc["attention_mask"],
                 SamplingParams(n=2, temperature=1.0, max_new_tokens=12, seed=0),
                 {tok.eos_token_id}, version)
    switched = 0
    for row, ids in enumerate(got.tokens):
        prompt_ids = enc["input_ids"][row // 2][enc["attention_mask"][row // 2] == 1].tolist()
        versions = got.versions[row]
        assert versions == [0] * min(3, len(ids)) + [7] * (len(ids) - 3)
        for model, tag in ((old, 0), (new, 7)):
            logp = _teacher_forced(model, prompt_ids, ids, 1.0)
            expected = logp.gather(-1, torch.tensor(ids)[:, None]).squeeze(-1).tolist()
            for t, v in enumerate(versions):
                if v == tag:
                    assert got.logprobs[row][t] == pytest.approx(expected[t], abs=1e-4)
        switched += len(ids) > 3
    assert switched > 0 and engine.version == 7
