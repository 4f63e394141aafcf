"""The toy code task: deterministic problems whose reference passes its tests in the real
sandbox (and a table of the examples does not), and reward=verifier in the main job."""
import json

import pytest

from orchestrator.config import ConfigError, validate
from orchestrator.main import run
from rewards.sandbox import run as run_in_sandbox
from tasks.toy_code import ToyCode
from tests.conftest import compose


def test_problems_are_a_pure_function_of_seed_split_and_index():
    assert ToyCode(seed=3).problem("train", 7) == ToyCode(seed=3).problem("train", 7)
    prompts = {ToyCode(seed=s).problem(split, i).prompt
               for s in (0, 1) for split in ("train", "test") for i in range(20)}
    assert len(prompts) > 60   # seeds, splits and indices give different problems


def test_held_out_functions_never_appear_in_training():
    task = ToyCode()
    train = {task.problem(split, i).prompt for split in ("train", "sft") for i in range(3000)}
    held_out = {task.problem("test", i).prompt for i in range(300)}
    assert held_out and not held_out & train


def test_prompts_and_solutions_stay_short():
    task = ToyCode()
    problems = [task.problem("train", i) for i in range(500)]
    assert max(len(p.prompt) for p in problems) <= 40
    assert max(len(p.solution) for p in problems) <= 40


def test_reference_passes_and_wrong_answers_fail_in_the_sandbox():
    p = ToyCode().problem("test", 0)
    slope, intercept = (int(n) for n in p.solution.split("return ")[1].split("*x"))
    values = [int(part.split("=")[1]) for part in p.prompt.split()[:-1]]
    table = "def f(x):return " + repr(dict(enumerate(values))) + "[x]"   # fits the examples only
    off_by_one = f"def f(x):return {slope + 1}*x{intercept - 1:+d}"       # right at x=1 only
    copied = f"def f(x):return {intercept}"                              # the constant f(0)

    assert run_in_sandbox(p.solution, p.answer).passed == [True] * len(p.answer)
    for wrong in (table, copied):
        assert not any(run_in_sandbox(wrong, p.answer).passed), wrong
    assert not all(run_in_sandbox(off_by_one, p.answer).passed)


def test_config_refuses_what_the_code_task_cannot_do(tmp_path):
    with pytest.raises(ConfigError, match="data.toy.twin_views"):
        validate(compose(tmp_path, "data=toy_code", "reward=verifier", "data.toy.twin_views=true"))
    with pytest.raises(ConfigError, match="data=toy_code"):
        validate(compose(tmp_path, "data.source=toy_code", "reward=verifier"))
    with pytest.raises(ConfigError, match="data.toy_code"):
        validate(compose(tmp_path, "data=toy_code", "reward=verifier", "data.toy_code.examples=1"))


def test_code_reward_runs_in_the_main_job(tmp_path):
    cfg = compose(tmp_path, "cluster=inline", "data=toy_code", "reward=verifier", "eval.num_prompts=4")
    summary = run(cfg)
    assert summary["steps"] == 2
    run_dir = tmp_path / "outputs" / cfg.experiment_name / cfg.run_name
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if "train/loss" in r]
    assert len(trained) == 2
    for r in trained:
        assert "reward/correct" in r and r["reward/flagged/correct"] == 0.0, r
    assert all("eval/accuracy" in r for r in rows if "time/eval" in r)
