"""The path a lab takes on day one, on CPU: a hub-format model (BPE tokenizer, chat template,
loaded from a folder through model.path) on real-format data, end to end through the main job:
experiment=gsm8k on GSM8K-format rows, experiment=humaneval on HumanEval from its wheel.
Learning is not asked of a tiny random model on real data; that the chat template reaches the
model, the verifier reads the data, and every stage runs is."""
import json
import logging

import pytest

from tests.conftest import compose

# GSM8K's format (question; answer = worked solution ending "#### <number>"), our own problems.
GSM8K_ROWS = [
    {"question": "Tom has 3 boxes with 4 apples each. How many apples does he have?",
     "answer": "Each box has 4 apples, so 3 * 4 = <<3*4=12>>12 apples.\n#### 12"},
    {"question": "A book costs $7 and a pen costs $2. What do 2 books and 3 pens cost?",
     "answer": "2 books cost 2 * 7 = <<2*7=14>>14. 3 pens cost 3 * 2 = <<3*2=6>>6.\n14 + 6 = 20\n#### 20"},
    {"question": "Mia read 15 pages on Monday and twice as many on Tuesday. How many in all?",
     "answer": "On Tuesday she read 15 * 2 = <<15*2=30>>30 pages.\n15 + 30 = <<15+30=45>>45\n#### 45"},
    {"question": "A farm sells 1,200 eggs a week. How many eggs does it sell in 3 weeks?",
     "answer": "1,200 * 3 = 3,600 eggs.\n#### 3,600"},
    {"question": "Sam had 50 marbles and gave away 18. How many are left?",
     "answer": "50 - 18 = <<50-18=32>>32\n#### 32"},
    {"question": "A class of 24 splits into teams of 6. How many teams are there?",
     "answer": "24 / 6 = <<24/6=4>>4\n#### 4"},
    {"question": "Ann buys 5 pencils at $0.50 each. How much does she pay?",
     "answer": "5 * 0.5 = <<5*0.5=2.5>>2.5\n#### 2.5"},
    {"question": "A train travels 60 miles an hour for 2 hours. How far does it go?",
     "answer": "60 * 2 = <<60*2=120>>120 miles.\n#### 120"},
    {"question": "What is the answer?", "answer": "no final line here"},   # no '####': skipped
]

# The tiny chat model (a BPE tokenizer with ChatML, model=tiny_chat) with room for real prompts.
CHAT_MODEL = ["model=tiny_chat", "model.tiny.max_position_embeddings=1024", "cluster=inline",
              "rollout.max_new_tokens=16", "eval.num_prompts=4", "steps=2"]


def _samples(run_dir):
    return [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]


def test_gsm8k_rows_are_read_and_their_solutions_pass_the_verifier(tmp_path):
    from core.records import Sample
    from rewards.verifiers import math_verify
    from tasks.datasets import load_prompt_file
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in GSM8K_ROWS))
    prompts, skipped = load_prompt_file(str(path), "question", "answer", "answer",
                                        answer_format="hashes")
    assert [p.answer for p in prompts] == ["12", "20", "45", "3600", "32", "4", "2.5", "120"]
    assert skipped == {"no reference answer": 1}

    def score(p, response):
        return math_verify(Sample(p.prompt_id, "g", [], [], [], 0, response_text=response,
                                  answer=p.answer), extractor="hashes")
    assert all(score(p, p.metadata["solution"]) == 1.0 for p in prompts)
    assert score(prompts[3], "so #### 3600.0") == 1.0
    assert score(prompts[3], "#### 3601") == 0.0
    assert score(prompts[3], "the answer is 3600") == 0.0          # not in the asked format


def test_experiment_gsm8k_runs_end_to_end_with_a_chat_model(tmp_path, caplog):
    from orchestrator.main import run
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in GSM8K_ROWS))
    cfg = compose(tmp_path, "experiment=gsm8k", *CHAT_MODEL, f"data.file.train_path={data}",
                  f"data.file.eval_path={data}", "warm_start.steps=2", "warm_start.batch_size=4",
                  "warm_start.micro_batch_size=4")
    with caplog.at_level(logging.INFO, logger="rewardmill"):
        summary = run(cfg)
    assert summary["steps"] == 2
    assert "preflight: correct scores 1.00 on 8 reference solutions" in caplog.text
    run_dir = tmp_path / "outputs" / "gsm8k" / "grpo-seed0"
    samples = _samples(run_dir)
    assert {s["kind"] for s in samples} == {"train", "eval"}
    for s in samples:   # the chat template and the system prompt reached the model
        assert s["prompt"].startswith("<|im_start|>system\nSolve the problem step by step.")
        assert s["prompt"].endswith("<|im_end|>\n<|im_start|>assistant\n")
        assert "<|im_start|>user\n" in s["prompt"] and s["flags"] == {}


def test_experiment_humaneval_runs_end_to_end_with_a_chat_model(tmp_path, caplog):
    from orchestrator.main import run
    cfg = compose(tmp_path, "experiment=humaneval", *CHAT_MODEL, "model.tiny.max_position_embeddings=2048")
    with caplog.at_level(logging.INFO, logger="rewardmill"):
        summary = run(cfg)
    assert summary["steps"] == 2
    # the canonical solutions of the first problems pass the sandbox through the same source
    assert "preflight: correct scores 1.00 on 8 reference solutions" in caplog.text
    samples = _samples(tmp_path / "outputs" / "humaneval" / "grpo-seed0")
    assert all(s["prompt"].startswith("<|im_start|>system\nComplete the Python function.")
               and "def " in s["prompt"] for s in samples)


@pytest.mark.parametrize("data", ["data=gsm8k data.file.train_path=x.jsonl", "data=humaneval",
                                  "data=toy_code"])
def test_toy_sources_on_other_data_refuse_to_start(tmp_path, data):
    from orchestrator.config import ConfigError, validate
    with pytest.raises(ConfigError, match=r"reward\.sources\[0\]\.fn='toy_exact': scores data\.source"):
        validate(compose(tmp_path, *data.split(), "reward=toy"))
