"""RLPR's std filter in the training loop: the scheduler drops the groups whose reward std is
below beta * EMA, samples more prompts until the batch is full, logs what it did, and a
resumed run restores the EMA it saved."""
import json

import pytest
import torch

from actors.buffer import ReplayBuffer
from core.records import Prompt, Sample
from orchestrator.cluster import Cluster, Ready
from orchestrator.config import ConfigError, validate
from orchestrator.main import run
from orchestrator.metrics import PhaseTimer
from orchestrator.pipeline import Pipeline
from orchestrator.scheduler import Scheduler
from rewards.self_rewards import reward_std
from tests.conftest import compose

# Reward groups by their unbiased std against the cut-off beta * EMA = 0.5 * 0.2 = 0.1
WIDE = [0.37, 0.10, 0.64, 0.10]      # 0.2585: kept
NEAR = [0.0, 0.2, 0.0, 0.2]          # 0.1155: kept
NARROW = [0.5, 0.5, 0.5, 0.55]       # 0.0250: dropped
SMALL = [0.0, 0.15, 0.0, 0.0]        # 0.0750: dropped
FLAT = [0.3, 0.3, 0.3, 0.3]          # 0: dropped


class ScriptedPipeline(Pipeline):
    """The real buffer path (add, next_batch on a ReplayBuffer), with rollout and
    reward replaced by hand-built scored groups, one list of groups per sampling round."""

    def __init__(self, rounds: list[list[list[float]]]):
        self.cluster = Cluster("inline")
        self.buffer = self.cluster.spawn(ReplayBuffer)
        self.repairer = None   # no repair stage
        self.rounds = iter(rounds)

    def generate(self, prompts, sampling, tag):
        groups, version = next(self.rounds), int(tag.split(".")[0])   # tag: "<step>.<round>/"
        return [Ready([Sample(f"p{k}", f"{tag}{k}", [1], [2], [0.0], version, reward=r)
                       for k, rewards in enumerate(groups) for r in rewards])]

    def annotate(self, futures):
        return futures

    def shares(self, prompts, sampling):
        return [(0, prompts, sampling)]


class FakePrompts:
    views_per_prompt = 1

    def next(self, n):
        return [Prompt(f"p{k}", "1+1=") for k in range(n)]


def _scheduler(tmp_path, rounds, *overrides):
    cfg = compose(tmp_path, "algorithm=rlpr", "algorithm.group_filter.ema_start_step=1",
                  "algorithm.group_filter.filter_start_step=2", *overrides)
    sched = Scheduler(cfg, ScriptedPipeline(rounds), FakePrompts(), [], 0, None, None, "")
    sched.group_filter.load_state_dict({"kind": "std_ema", "rule": {"ema": 0.2, "history": []}})
    return sched


def test_drops_groups_below_beta_ema_and_refills(tmp_path):
    rounds = [[WIDE, NARROW, FLAT, NEAR], [SMALL, WIDE, NARROW, NEAR]]
    sched = _scheduler(tmp_path, rounds)                      # 4 prompts per step, 3 rounds max
    step = 2                                                  # logged as step 3: filters
    samples, used, added = sched.sample_batch(step, PhaseTimer())
    served = [s.group_id for s in samples][::4]
    assert used == 2
    assert served == ["2.1/0", "2.1/3", "2.2/1", "2.2/3"]     # the kept groups, in order
    assert [a.dropped for a in added] == [["2.1/1", "2.1/2"], ["2.2/0", "2.2/2"]]

    metrics = sched.update_group_filter(step, added, samples)
    every = [WIDE, NARROW, FLAT, NEAR, SMALL, WIDE, NARROW, NEAR]
    step_mean = sum(reward_std(g) for g in every) / len(every)
    assert metrics["filter/threshold"] == pytest.approx(0.1)
    assert metrics["filter/ema"] == pytest.approx(0.99 * 0.2 + 0.01 * step_mean)
    assert (metrics["filter/kept_groups"], metrics["filter/dropped_groups"],
            metrics["filter/padded_groups"]) == (4, 4, 0)


def test_pads_with_the_widest_dropped_groups_when_rounds_run_out(tmp_path):
    rounds = [[WIDE, NARROW, FLAT, SMALL], [FLAT, NEAR, NARROW, FLAT]]
    sched = _scheduler(tmp_path, rounds, "algorithm.max_sampling_rounds=2")
    samples, used, added = sched.sample_batch(2, PhaseTimer())
    assert used == 2
    # two kept; the rest of the batch is the dropped groups of widest spread: SMALL, NARROW
    assert [s.group_id for s in samples][::4] == ["2.1/0", "2.2/1", "2.1/3", "2.1/1"]
    assert sched.update_group_filter(2, added, samples)["filter/padded_groups"] == 2


def test_no_threshold_before_filter_start_step(tmp_path):
    sched = _scheduler(tmp_path, [[FLAT, FLAT, NARROW, WIDE]])
    sched.group_filter.load_state_dict({"kind": "std_ema", "rule": {"ema": None, "history": []}})
    samples, used, added = sched.sample_batch(0, PhaseTimer())   # step 1: collects only
    assert used == 1 and len(samples) == 16
    metrics = sched.update_group_filter(0, added, samples)
    assert "filter/threshold" not in metrics and metrics["filter/dropped_groups"] == 0
    # step 1 is the last before filter_start_step=2: the EMA starts at its mean std
    assert metrics["filter/ema"] == pytest.approx(metrics["filter/mean_std"])


def test_config_errors_name_the_field(tmp_path):
    bad = {"algorithm.group_filter.kind=std": "algorithm.group_filter.kind",
           "algorithm.group_filter.beta=-1": "algorithm.group_filter.beta",
           "algorithm.group_filter.filter_start_step=6": "algorithm.group_filter.filter_start_step",
           "algorithm.group_filter.source=nope": "algorithm.group_filter.source",
           "algorithm.dynamic_sampling=true": "algorithm.dynamic_sampling"}
    for override, field in bad.items():
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            validate(compose(tmp_path, "reward=rlpr", "algorithm=rlpr", override))
    validate(compose(tmp_path, "algorithm=dapo", "algorithm.dynamic_sampling=false"))


MAIN_JOB = ["cluster=inline", "reward=rlpr", "algorithm=rlpr", "eval.num_prompts=4",
            "algorithm.group_filter.ema_start_step=1", "algorithm.group_filter.filter_start_step=2",
            "algorithm.group_filter.beta=1.0",     # cut at the mean std: some groups drop
            "algorithm.max_sampling_rounds=2", "steps=3", "checkpoint.keep=5"]


def _trained_rows(cfg):
    lines = open(f"{cfg.run_dir}/metrics.jsonl").read().splitlines()
    return [r for r in map(json.loads, lines) if "train/loss" in r]


def test_main_job_logs_threshold_and_dropped_groups(tmp_path):
    cfg = compose(tmp_path, *MAIN_JOB)
    assert run(cfg)["steps"] == 3
    rows = _trained_rows(cfg)
    assert "filter/threshold" not in rows[0] and "filter/ema" in rows[0]
    for before, row in zip(rows, rows[1:]):
        assert row["filter/threshold"] == pytest.approx(1.0 * before["filter/ema"])
        assert row["filter/kept_groups"] + row["filter/dropped_groups"] == 4 * row[
            "rollout/sampling_rounds"]
        assert row["rollout/samples"] == 16          # the batch is always full
    assert sum(r["filter/dropped_groups"] for r in rows[1:]) >= 1


def test_resume_restores_the_saved_ema_and_filters_as_uninterrupted(tmp_path, monkeypatch):
    cfg = compose(tmp_path, *MAIN_JOB, "steps=2")
    run(cfg)
    saved = torch.load(f"{cfg.run_dir}/checkpoints/step_000002/components.pt",
                       weights_only=False)["group_filter"]
    assert saved["rule"]["ema"] is not None

    restored = {}
    original = Scheduler.restore_group_filter

    def spy(self, state, folder):
        original(self, state, folder)
        restored.update(self.group_filter.state_dict())
    monkeypatch.setattr(Scheduler, "restore_group_filter", spy)
    resumed = compose(tmp_path, *MAIN_JOB, "resume=true")
    assert run(resumed)["steps"] == 3
    assert restored == saved
    rows = _trained_rows(resumed)
    assert len(rows) == 3 and rows[-1]["filter/threshold"] == 1.0 * saved["rule"]["ema"]

    straight = compose(tmp_path, *MAIN_JOB, "run_name=straight")   # the same 3 steps at once
    run(straight)
    filtered = lambda row: {k: v for k, v in row.items() if k.startswith("filter/")}
    assert filtered(_trained_rows(straight)[-1]) == filtered(rows[-1])
