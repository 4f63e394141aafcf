"""The main job end to end, small: inline (one process) and on a real local Ray instance."""
import json

import pytest
from transformers import AutoModelForCausalLM

from core.models import load_tokenizer
from orchestrator.main import run
from tests.conftest import compose

MISBEHAVING_SOURCES = (
    "reward.sources=[{name:correct,fn:toy_exact},"
    "{name:broken,fn:tests.reward_fns.raises,weight:0.0},"
    "{name:slow,fn:tests.reward_fns.hangs,weight:0.0,timeout_s:0.2}]")


def _history(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_inline_run_survives_raising_and_hanging_rewards(tmp_path):
    cfg = compose(tmp_path, "cluster=inline", MISBEHAVING_SOURCES, "warm_start.steps=3")
    summary = run(cfg)
    run_dir = tmp_path / "outputs" / "toy_arith" / "grpo-seed0"
    assert summary["steps"] == 2 and summary["wall_s"] > 0
    saved = json.loads((run_dir / "summary.json").read_text())
    assert {"accuracy_before", "accuracy_after", "wall_s", "steps"} <= saved.keys()
    rows = [r for r in _history(run_dir) if "reward/combined" in r]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        # every sample of the batch (4 prompts x 4 responses) is flagged by both bad sources
        assert r["reward/flagged/broken"] == 16 and r["reward/flagged/slow"] == 16
        assert r["reward/flagged/correct"] == 0
        assert r["train/logprob_mismatch"] < 1e-4   # sampler and learner agree
        assert r["time/scheduler_overhead"] >= 0
    # a weight-0 source that nothing reads only informs: its flags mask no token
    assert all(r["advantage/trained_token_fraction"] == 1.0 for r in rows)
    policy = run_dir / "checkpoints" / "step_000002" / "policy"
    model = AutoModelForCausalLM.from_pretrained(policy)
    assert model.config.model_type == "qwen2"
    assert load_tokenizer(policy).decode(load_tokenizer(policy)("1+2=")["input_ids"]) == "1+2="


def test_local_ray_run_with_two_learner_ranks_and_user_code(tmp_path):
    # The estimator runs on the driver, the loss inside each learner actor: both are the
    # user's own functions, named by dotted path only.
    cfg = compose(tmp_path, "cluster=local", "learner.num_ranks=2", "rollout.num_workers=2",
                  "reward.num_workers=2", "logging.plot=true", "logging.tensorboard=true",
                  "logging.wandb_mode=offline", "warm_start.steps=2",
                  # an algorithm from the bare schema (no options of its own), on the command line
                  "algorithm=_common", "algorithm.name=custom",
                  "algorithm.estimator=tests.custom_algorithms.centred_twice",
                  "+algorithm.estimator_options.scale=3.0",
                  "algorithm.loss=tests.custom_algorithms.plain_pg")
    summary = run(cfg)
    run_dir = tmp_path / "outputs" / "toy_arith" / "custom-seed0"
    assert summary["steps"] == 2
    rows = [r for r in _history(run_dir) if "reward/combined" in r]
    assert len(rows) == 2 and all(r["train/optimizer_steps"] == 2 for r in rows)
    assert all(r["train/logprob_mismatch"] < 1e-4 for r in rows)
    assert (run_dir / "summary.png").stat().st_size > 10_000
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert list((run_dir / "wandb").glob("offline-run-*"))
    assert (run_dir / "checkpoints" / "step_000002" / "policy" / "model.safetensors").exists()


def test_fresh_run_moves_an_earlier_run_aside(tmp_path):
    cfg = compose(tmp_path, "cluster=inline", "steps=1", "eval.num_prompts=0")
    run(cfg)
    run(cfg)
    runs = sorted(p.name for p in (tmp_path / "outputs" / "toy_arith").iterdir())
    assert runs[0] == "grpo-seed0" and runs[1].startswith("grpo-seed0.previous-")


def test_file_dataset_run(tmp_path):
    rows = [{"q": f"{a}+{b}=", "a": a + b} for a in range(10) for b in range(3)]
    rows.insert(5, {"q": "", "a": 1})
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = compose(tmp_path, "cluster=inline", "data=file", f"data.file.train_path={data}",
                  f"data.file.eval_path={data}", "data.file.prompt_field=q",
                  "data.file.answer_field=a", "reward=verifier", "data.answer_format=toy", "steps=1")
    summary = run(cfg)
    assert summary["steps"] == 1
