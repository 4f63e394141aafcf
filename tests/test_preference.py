"""Offline DPO and SimPO on the RL learner: the policy comes to prefer the chosen responses;
Bradley-Terry on the same learner: a reward model comes to score them higher."""
import pytest
from hydra import compose, initialize_config_dir

from orchestrator.preference import run_preference
from tests.conftest import REPO, TINY


@pytest.mark.parametrize("loss", ["dpo", "simpo", "bradley_terry"])
def test_preference_training_learns_the_pairs(tmp_path, loss):
    tiny = [o for o in TINY if o.startswith("model.")]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("preference", overrides=[
            # a reward model must learn to check the arithmetic from a random init: more steps
            *tiny, f"loss={loss}", "steps=" + ("100" if loss == "bradley_terry" else "40"),
            "learner.lr=" + ("3e-3" if loss == "bradley_terry" else "1e-3"), "learner.micro_batch_size=16",
            "learner.threads=1", f"output_dir={tmp_path}", f"cache_dir={tmp_path}/cache"])
    summary = run_preference(cfg)
    if loss == "bradley_terry":
        # a random tiny RM must learn to check sums; held-out accuracy moves only slowly,
        # so the check is that the loss falls over training (first vs last 20 steps)
        import json
        rows = [json.loads(l) for l in (tmp_path / "preference" / "bradley_terry-seed0" /
                                       "metrics.jsonl").read_text().splitlines()]
        losses = [r["loss"] for r in rows]
        assert sum(losses[-20:]) < sum(losses[:20]) - 0.02
    else:
        assert summary["train_loss_last"] < summary["train_loss_first"]
        assert summary["eval_accuracy_after"] > summary["eval_accuracy_before"] + 0.05
    trained = "reward_model" if loss == "bradley_terry" else "policy"
    assert (tmp_path / "preference" / f"{loss}-seed0" / trained / "model.safetensors").exists()


def test_bradley_terry_worked_example():
    import torch
    from learners.preference import bradley_terry_loss
    loss, gap = bradley_terry_loss(torch.tensor([2.0]), torch.tensor([0.5]))
    assert float(loss) == pytest.approx(0.2014, abs=1e-4) and float(gap) == 1.5  # Cooper spec
