"""Offline DPO and SimPO on the RL learner: the policy comes to prefer the chosen responses;
Bradley-Terry on the same learner: a reward model comes to score them higher."""
import pytest
from hydra import compose, initialize_config_dir

from orchestrator.preference import run_preference
from tests.conftest import REPO, TINY


def _pairs_file(path, count=32):
    """`count` toy pairs (worked solution vs one digit wrong) as the JSONL a user would give."""
    import json
    import random

    from tasks.toy_arith import ToyArithmetic, corrupt
    task = ToyArithmetic(1, 3, 2, seed=0)
    rows = [task.problem("train", i) for i in range(count)]
    path.write_text("".join(json.dumps({"prompt": p.prompt, "chosen": p.solution,
                                        "rejected": corrupt(p.solution, random.Random(i))}) + "\n"
                            for i, p in enumerate(rows)))
    return str(path)


@pytest.mark.parametrize("loss", ["dpo", "simpo", "bradley_terry"])
def test_preference_training_learns_the_pairs(tmp_path, loss):
    # The same 32 pairs every step, and as the eval set: the model must come to fit them.
    # (Fresh toy pairs with held-out accuracy moved by 0.00-0.10 over seeds in 40-100 steps, so
    # the old +0.05 check passed or failed by seed.) Measured over seeds 0-3: DPO loss 0.69 ->
    # 0.45-0.47, SimPO 1.78 -> 1.23-1.30, Bradley-Terry 0.69 -> 0.17-0.25; accuracy on the
    # pairs from 0.38-0.69 to 0.91-0.97.
    tiny = [o for o in TINY if o.startswith("model.")]
    pairs = _pairs_file(tmp_path / "pairs.jsonl")
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("preference", overrides=[
            # a reward model must learn to check the arithmetic from a random init: more steps
            *tiny, f"loss={loss}", "steps=" + ("60" if loss == "bradley_terry" else "40"),
            "learner.lr=" + ("3e-3" if loss == "bradley_terry" else "1e-3"),
            "learner.micro_batch_size=16", "learner.threads=1", "data.source=file",
            f"data.file.train_path={pairs}", f"data.file.eval_path={pairs}", "pairs_per_step=32",
            f"output_dir={tmp_path}", f"cache_dir={tmp_path}/cache"])
    summary = run_preference(cfg)
    assert summary["train_loss_last"] < summary["train_loss_first"] - 0.1, summary
    assert summary["eval_accuracy_after"] >= max(0.85, summary["eval_accuracy_before"] + 0.2), summary
    trained = "reward_model" if loss == "bradley_terry" else "policy"
    assert (tmp_path / "preference" / f"{loss}-seed0" / trained / "model.safetensors").exists()


def test_bradley_terry_worked_example():
    import torch
    from core.preference_losses import bradley_terry_loss
    loss, gap = bradley_terry_loss(torch.tensor([2.0]), torch.tensor([0.5]))
    assert float(loss) == pytest.approx(0.2014, abs=1e-4) and float(gap) == 1.5  # Cooper spec
