"""cluster=ray: the main job submitted with `ray job submit` to a Ray cluster started here."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO, TINY

BIN = Path(sys.executable).parent


def test_ray_job_submit_runs_the_main_job(tmp_path):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    ray = str(BIN / "ray")
    subprocess.run([ray, "start", "--head", "--num-cpus=4", "--disable-usage-stats",
                    "--include-dashboard=true"], env=env, check=True, capture_output=True,
                   timeout=120)
    try:
        for _ in range(20):   # a loaded machine starts the dashboard's job agent late: Ray says try again
            out = subprocess.run(
                [ray, "job", "submit", "--working-dir", ".", "--", sys.executable, "scripts/train.py",
                 "cluster=ray", *TINY, f"output_dir={tmp_path}/outputs", f"cache_dir={tmp_path}/cache",
                 "run_name=submitted"],
                cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
            if "No available agent to submit job" not in out.stderr + out.stdout:
                break
            time.sleep(3)
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads((tmp_path / "outputs" / "toy_arith" / "submitted" / "summary.json").read_text())
    assert summary["steps"] == 2
