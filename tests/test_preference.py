"""Offline DPO and SimPO on the RL learner: the policy comes to prefer the chosen responses."""
import pytest
from hydra import compose, initialize_config_dir

from orchestrator.preference import run_preference
from tests.conftest import REPO, TINY


@pytest.mark.parametrize("loss", ["dpo", "simpo"])
def test_preference_training_learns_the_pairs(tmp_path, loss):
    tiny = [o for o in TINY if o.startswith("model.")]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("preference", overrides=[
            *tiny, f"loss={loss}", "steps=40", "learner.lr=1e-3", "learner.micro_batch_size=16",
            "learner.threads=1", f"output_dir={tmp_path}", f"cache_dir={tmp_path}/cache"])
    summary = run_preference(cfg)
    assert summary["train_loss_last"] < summary["train_loss_first"]
    assert summary["eval_accuracy_after"] > summary["eval_accuracy_before"] + 0.05
    assert (tmp_path / "preference" / f"{loss}-seed0" / "policy" / "model.safetensors").exists()
