"""Every reward config runs in the main job from config alone (reward=<name>), and every
source shows up in the logged metrics with its flagged count."""
import json
import socket
from urllib.parse import urlparse

import pytest
import torch

from orchestrator.main import run
from tests.conftest import REPO, compose

REWARDS = sorted(p.stem for p in (REPO / "conf" / "reward").glob("*.yaml"))
EXTRA = {  # what a method needs besides reward=<name>
    "co_reward": ["data.toy.twin_views=true"],
    "constrained": ["algorithm=constrained"],
    "reward_model": ["reward_model.steps=6", "reward_model.pairs_per_step=8",
                     "reward_model.micro_batch_size=16", "reward_model.eval_pairs=8"],
}
EXTRA["cooper"] = EXTRA["par"] = EXTRA["reward_model"]
# configs whose judge the job serves itself (a tiny untrained model): its free-text output does
# not parse, so those samples are flagged and counted; the logit-reading judges always score
JUDGED = {n for n in REWARDS if "${judge.url}" in (REPO / "conf" / "reward" / f"{n}.yaml").read_text()}
ALWAYS_PARSES = {"soft_verifier", "rlbff"}
# flagged samples would leave the first step nothing to train on, which stops a run: train on
# their failure_value instead, so the flags are counted and the run goes on
for _name in JUDGED - ALWAYS_PARSES:
    EXTRA[_name] = EXTRA.get(_name, []) + ["reward.exclude_flagged_from_loss=false"]


@pytest.mark.parametrize("reward", REWARDS)
def test_reward_config_runs_in_main_job(tmp_path, reward):
    cfg = compose(tmp_path, "cluster=inline", f"reward={reward}", "eval.num_prompts=4",
                  "rollout.step_delimiter=';'", *EXTRA.get(reward, []))
    names = [s.name for s in cfg.reward.sources]
    summary = run(cfg)
    assert summary["steps"] == 2
    run_dir = tmp_path / "outputs" / "toy_arith" / cfg.run_name
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if "train/loss" in r]
    assert len(trained) == 2
    for r in trained:
        for name in names:
            flagged = r[f"reward/flagged/{name}"]
            assert f"reward/{name}" in r and 0 <= flagged <= r["rollout/samples"], (name, r)
            if reward not in JUDGED or reward in ALWAYS_PARSES or name == "correct":
                assert flagged == 0.0, (name, r)
        assert all(v == v for v in r.values() if isinstance(v, float)), r   # no NaN
    if reward in JUDGED:   # the job served its own judge and stopped it at the end
        url = urlparse(cfg.judge.url)
        with pytest.raises(OSError):
            socket.create_connection((url.hostname, url.port), timeout=2)
    if reward == "co_reward":   # both views of 4 prompts: 8 groups of 4
        assert trained[0]["rollout/samples"] == 32
    if reward == "constrained":
        assert "lagrange/correct" in trained[-1]
    components = torch.load(run_dir / "checkpoints" / "step_000002" / "components.pt",
                            weights_only=False)
    if reward == "cooper":   # the co-trained RM is checkpointed
        assert "model" in components["rewarders"][0]["cooper"]
    if reward == "laser":    # the learner trains r_s with the aux loss and mixes advantages
        for key in ("train/laser_loss", "train/laser_accuracy", "train/laser_self_reward",
                    "train/laser_c_ref", "advantage/laser_mixed_groups"):
            assert all(key in r for r in trained), key
        assert all(r["train/laser_loss"] > 0 for r in trained)
        # one c_ref on both sides: the learner's (checkpointed) is the one the rollout measured
        state = run_dir / "checkpoints" / "step_000002" / "policy" / "learner_state.json"
        learner_c_ref = json.loads(state.read_text())["laser_c_ref"]
        assert learner_c_ref == pytest.approx(components["rollouts"][0]["self_verify"]["c_ref"], abs=1e-3)
        assert trained[0]["train/laser_c_ref"] == learner_c_ref
    if reward == "rlpr":     # the no-reasoning baselines too
        assert components["rollouts"][0]["rlpr"]["baselines"]
