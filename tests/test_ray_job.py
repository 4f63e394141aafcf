"""README's `ray job submit` section, run as written against a local `ray start --head`: the
job's run and warm-start cache land in the durable default (~/rewardmill of a temporary HOME),
not in Ray's temporary copy of the working dir; they outlive `ray stop`; the next job reuses
the cache."""
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from tests.conftest import REPO, TINY

SECTION = "### `ray job submit`"
NO_AGENT = "No available agent to submit job"


def readme_commands() -> list[str]:
    """The shell commands of the README section's fenced bash blocks, continuation lines joined."""
    text = (REPO / "README.md").read_text()
    section = text[text.index(SECTION) + len(SECTION):]
    section = section[:re.search(r"^#{2,3} ", section, re.M).start()]
    blocks = re.findall(r"^```bash\n(.*?)^```", section, re.S | re.M)
    assert blocks, f"README section {SECTION} has no ```bash block"
    return [c for c in "\n".join(blocks).replace("\\\n", " ").splitlines() if c.strip()]


def fresh_shell_env(home: Path) -> dict:
    """A new shell's environment: no venv on PATH (a bare `python` in the job would be the
    system one), no Ray auth mode or address, and our own HOME for ~/rewardmill and ~/.ray."""
    venv_bin = (REPO / ".venv" / "bin").resolve()
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                           if p and Path(p).resolve() != venv_bin)
    drop = ("RAY_AUTH_MODE", "RAY_ADDRESS", "REWARDMILL_HOME", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, "PATH": path, "HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0"}


def bash(lines: list[str], env: dict, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", "\n".join(lines)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def submit_job(exports: list[str], command: str, env: dict) -> str:
    for _ in range(20):   # a loaded machine starts the dashboard's job agent late: Ray says try again
        out = bash(exports + [command], env, timeout=900)
        if NO_AGENT not in out.stderr + out.stdout:
            break
        time.sleep(3)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-6000:]
    return log


def test_readme_ray_job_submit_keeps_run_and_cache(tmp_path):
    commands = readme_commands()
    at = next(i for i, c in enumerate(commands) if "ray job submit" in c)
    setup, submit, teardown = commands[:at], commands[at], commands[at + 1:]
    exports = [c for c in setup if c.lstrip().startswith("export ")]
    assert any("ray stop" in c for c in teardown), f"{SECTION} should end with `ray stop`"
    # The only change to the commands: a tiny run, with a 2-step warm start to fill the cache.
    tiny = [o for o in TINY if not o.startswith("warm_start.steps=")] + ["warm_start.steps=2"]
    submit = f"{submit.split(' #')[0]} {' '.join(tiny)} run_name="
    home = tmp_path / "home"
    home.mkdir()
    env = fresh_shell_env(home)
    durable = home / "rewardmill"
    run_dir, cache = durable / "outputs" / "toy_arith" / "submitted", durable / ".cache" / "rewardmill"

    try:
        started = bash(setup, env, timeout=180)
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        session = (Path(tempfile.gettempdir()) / "ray" / "session_latest").resolve()
        first = submit_job(exports, submit + "submitted", env)
        second = submit_job(exports, submit + "again", env)
        copies = list((session / "runtime_resources" / "working_dir_files").glob("_ray_pkg_*"))
        leaked = [p for c in copies for p in (c / "outputs", c / ".cache") if p.exists()]
    finally:
        bash(exports + teardown, env, timeout=180)
        subprocess.run([str(REPO / ".venv" / "bin" / "ray"), "stop", "--force"], env=env,
                       capture_output=True, timeout=120)

    assert f"run_dir: {run_dir}" in first and f"cache_dir: {cache}" in first, first[-6000:]
    assert copies and leaked == [], f"outputs written into Ray's copy of the working dir: {leaked}"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["run_dir"] == str(run_dir)
    assert (run_dir / "checkpoints" / "step_000002" / "policy" / "config.json").exists()
    assert (run_dir / ".hydra" / "config.yaml").exists()   # Hydra's own files follow run_dir
    sft = sorted(cache.glob("sft-*"))
    assert len(sft) == 1 and sorted(cache.glob("tiny-*")), sorted(p.name for p in cache.iterdir())
    assert f"warm start: reusing {sft[0]}" in second, second[-6000:]
