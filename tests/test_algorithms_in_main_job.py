"""Every algorithm config runs in the main job by changing one value: algorithm=<name>."""
import json

import pytest

from orchestrator.main import run
from tests.conftest import REPO, compose

ALGORITHMS = sorted(p.stem for p in (REPO / "conf" / "algorithm").glob("*.yaml")
                    if not p.stem.startswith("_"))


def test_every_estimator_has_a_config():
    from core.registry import names
    used = set()
    for name in ALGORITHMS:
        text = (REPO / "conf" / "algorithm" / f"{name}.yaml").read_text()
        used |= {line.split(":")[1].strip() for line in text.splitlines()
                 if line.startswith("estimator:")}
    assert set(names("advantage")) <= used | {"grpo"}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_algorithm_runs(tmp_path, algorithm):
    # constrained RLHF needs its constrained sources
    extra = ["reward=constrained"] if algorithm == "constrained" else []
    cfg = compose(tmp_path, "cluster=inline", f"algorithm={algorithm}", "eval.num_prompts=4",
                  "learner.micro_batch_size=8", *extra)
    summary = run(cfg)
    assert summary["steps"] == 2
    rows = [json.loads(line) for line in
            (tmp_path / "outputs" / "toy_arith" / f"{algorithm}-seed0" / "metrics.jsonl")
            .read_text().splitlines()]
    trained = [r for r in rows if "train/loss" in r]
    assert len(trained) == 2
    assert all(r["train/optimizer_steps"] == 2 for r in trained)   # 16 responses / mini 8
    for r in trained:
        assert all(v == v for v in r.values() if isinstance(v, float)), r   # no NaN
