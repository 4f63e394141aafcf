"""Every reward config runs in the main job from config alone (reward=<name>), and every
source shows up in the logged metrics with its flagged count."""
import json

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
EXTRA["cooper"] = EXTRA["reward_model"]


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
            assert f"reward/{name}" in r and r[f"reward/flagged/{name}"] == 0.0, (name, r)
        assert all(v == v for v in r.values() if isinstance(v, float)), r   # no NaN
    if reward == "co_reward":   # both views of 4 prompts: 8 groups of 4
        assert trained[0]["rollout/samples"] == 32
    if reward == "constrained":
        assert "lagrange/correct" in trained[-1]
    components = torch.load(run_dir / "checkpoints" / "step_000002" / "components.pt",
                            weights_only=False)
    if reward == "cooper":   # the co-trained RM is checkpointed
        assert "model" in components["rewarders"][0]["cooper"]
    if reward == "rlpr":     # the no-reasoning baselines too
        assert components["rollouts"][0]["rlpr"]["baselines"]
