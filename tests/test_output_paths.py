"""Where outputs and caches go (orchestrator/paths.py): the launch dir normally, $REWARDMILL_HOME
(default ~/rewardmill) inside a Ray job, never Ray's temporary copy of the working dir."""
import os
import subprocess
import sys

import pytest

from orchestrator.config import ConfigError
from orchestrator.paths import RAY_JOB_ENV, durable_path, resolve_output_paths
from tests.conftest import REPO, compose


@pytest.fixture
def not_a_ray_job(monkeypatch):
    monkeypatch.delenv(RAY_JOB_ENV, raising=False)
    monkeypatch.delenv("REWARDMILL_HOME", raising=False)


def ray_copy(tmp_path):
    """A folder laid out like the cwd Ray gives a submitted job."""
    copy = (tmp_path / "ray" / "session_x" / "runtime_resources" / "working_dir_files"
            / "_ray_pkg_0123")
    copy.mkdir(parents=True)
    return copy


def test_relative_paths_resolve_against_the_launch_dir(tmp_path, monkeypatch, not_a_ray_job):
    monkeypatch.chdir(tmp_path)
    assert durable_path("outputs/x") == str(tmp_path / "outputs" / "x")
    assert durable_path("/abs/out") == "/abs/out"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert durable_path("~/runs") == str(tmp_path / "home" / "runs")


def test_a_submitted_job_writes_under_rewardmill_home(tmp_path, monkeypatch, not_a_ray_job):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(RAY_JOB_ENV, "{}")   # what Ray sets for a job's entrypoint
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert durable_path("outputs") == str(tmp_path / "home" / "rewardmill" / "outputs")
    monkeypatch.setenv("REWARDMILL_HOME", str(tmp_path / "durable"))
    assert durable_path("outputs") == str(tmp_path / "durable" / "outputs")
    assert durable_path("/abs/out") == "/abs/out"


def test_a_cwd_inside_rays_copy_counts_as_a_ray_job(tmp_path, monkeypatch, not_a_ray_job):
    monkeypatch.chdir(ray_copy(tmp_path))
    monkeypatch.setenv("REWARDMILL_HOME", str(tmp_path / "durable"))
    assert durable_path(".cache/rewardmill") == str(tmp_path / "durable" / ".cache" / "rewardmill")


def test_a_relative_rewardmill_home_is_refused_in_a_ray_job(tmp_path, monkeypatch, not_a_ray_job):
    monkeypatch.chdir(ray_copy(tmp_path))
    monkeypatch.setenv("REWARDMILL_HOME", "rel/home")
    with pytest.raises(ConfigError, match="REWARDMILL_HOME='rel/home': must be an absolute path"):
        durable_path("outputs")


def test_config_paths_become_absolute(tmp_path, monkeypatch, not_a_ray_job):
    cfg = compose(tmp_path, "output_dir=outs", "cache_dir=cache", "run_name=r")
    monkeypatch.chdir(ray_copy(tmp_path))
    monkeypatch.setenv("REWARDMILL_HOME", str(tmp_path / "durable"))
    resolve_output_paths(cfg)
    assert cfg.output_dir == str(tmp_path / "durable" / "outs")
    assert cfg.run_dir == str(tmp_path / "durable" / "outs" / "toy_arith" / "r")
    assert cfg.cache_dir == str(tmp_path / "durable" / "cache")


def test_hydra_run_folder_follows_run_dir_out_of_rays_copy(tmp_path, not_a_ray_job):
    # An invalid value stops the job right after Hydra has made its run folder.
    copy = ray_copy(tmp_path)
    env = {**os.environ, "REWARDMILL_HOME": str(tmp_path / "durable")}
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), "cluster=inline",
                          "learner.mini_batch_size=999"], cwd=copy, env=env,
                         capture_output=True, text=True, timeout=120)
    assert "learner.mini_batch_size=999" in out.stderr, out.stderr[-3000:]
    run_dir = tmp_path / "durable" / "outputs" / "toy_arith" / "grpo-seed0"
    assert (run_dir / ".hydra" / "config.yaml").exists(), out.stderr[-3000:]
    assert list(copy.iterdir()) == []
