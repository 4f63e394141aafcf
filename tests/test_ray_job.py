"""cluster=ray: the main job submitted with `ray job submit` to a Ray cluster started here."""
import json
import os
import subprocess
import sys
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
        out = subprocess.run(
            [ray, "job", "submit", "--working-dir", ".", "--", sys.executable, "scripts/train.py",
             "cluster=ray", *TINY, f"output_dir={tmp_path}/outputs", f"cache_dir={tmp_path}/cache",
             "run_name=submitted"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads((tmp_path / "outputs" / "toy_arith" / "submitted" / "summary.json").read_text())
    assert summary["steps"] == 2
