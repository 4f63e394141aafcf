"""A run killed with SIGKILL and resumed ends with the same weights as an uninterrupted one."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, TINY

STEPS = 4


def _command(tmp_path, run_name, algorithm, *extra):
    return [sys.executable, "scripts/train.py", "cluster=inline", *TINY,
            f"output_dir={tmp_path}/outputs", f"cache_dir={tmp_path}/cache",
            f"steps={STEPS}", "checkpoint.keep=10", "warm_start.steps=2",
            f"algorithm={algorithm}", f"run_name={run_name}", *extra]


def _final_weights(tmp_path, run_name, part=""):
    policy = (tmp_path / "outputs" / "toy_arith" / run_name / "checkpoints" / f"step_{STEPS:06d}"
              / "policy" / part)
    return load_file(policy / "model.safetensors")


@pytest.mark.parametrize("algorithm", ["grpo", "ppo"])   # ppo: the critic resumes too
def test_kill_and_resume_matches_uninterrupted(tmp_path, algorithm):
    env = {**os.environ, "WANDB_MODE": "disabled"}
    subprocess.run(_command(tmp_path, "straight", algorithm), cwd=REPO, env=env, check=True,
                   capture_output=True, timeout=300)

    # Same run, killed hard once its step-2 checkpoint is on disk.
    ckpt = tmp_path / "outputs" / "toy_arith" / "killed" / "checkpoints" / "step_000002"
    proc = subprocess.Popen(_command(tmp_path, "killed", algorithm), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (ckpt.parent / f"step_{STEPS:06d}").exists()

    out = subprocess.run(_command(tmp_path, "killed", algorithm, "resume=true"), cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resumed from" in out.stderr + out.stdout

    for part in ["", "critic"] if algorithm == "ppo" else [""]:
        straight = _final_weights(tmp_path, "straight", part)
        resumed = _final_weights(tmp_path, "killed", part)
        assert straight.keys() == resumed.keys()
        for name in straight:
            assert torch.equal(straight[name], resumed[name]), (part, name)
