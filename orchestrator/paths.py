"""Where run outputs and caches go: resolved once, to absolute paths, before anything writes.

Relative output_dir / run_dir / cache_dir resolve against
  - the directory the job was launched from (the cwd), normally;
  - $REWARDMILL_HOME (default ~/rewardmill) inside a `ray job submit` job, whose cwd is Ray's
    temporary copy of the working dir (<ray tmp>/session_*/runtime_resources/working_dir_files/
    _ray_pkg_*), one per session and code version: checkpoints and the warm-start cache must
    outlive it, and the next job must find the cache.
Importing this module registers the `durable_path` resolver that conf/config.yaml uses for
Hydra's own run folder, so Hydra's files land in the same run_dir.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from orchestrator.config import ConfigError

log = logging.getLogger("rewardmill")

HOME_ENV = "REWARDMILL_HOME"
DEFAULT_HOME = "~/rewardmill"
# Ray (2.60) sets this in the environment of a submitted job's entrypoint; no RAY_JOB_ID there.
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
# Ray unpacks working_dir / py_modules copies under <session>/runtime_resources/.
RAY_COPY_DIR = "runtime_resources"


def in_ray_job() -> bool:
    """True in a `ray job submit` entrypoint or any process running inside a Ray-made copy."""
    return RAY_JOB_ENV in os.environ or RAY_COPY_DIR in Path.cwd().parts


def durable_base() -> Path:
    """What a relative path is relative to: the launch directory, or REWARDMILL_HOME in a Ray job."""
    if not in_ray_job():
        return Path.cwd()
    home = Path(os.path.expanduser(os.environ.get(HOME_ENV) or DEFAULT_HOME))
    if not home.is_absolute():
        raise ConfigError(f"{HOME_ENV}={os.environ[HOME_ENV]!r}: must be an absolute path (a "
                          f"relative one would land in Ray's temporary copy of the working dir); "
                          f"set it to e.g. /shared/rewardmill, or unset it for {DEFAULT_HOME}")
    return home


def durable_path(path) -> str:
    """`path` as an absolute path ('~' expanded; relative ones under durable_base())."""
    p = Path(os.path.expanduser(str(path)))
    return os.path.abspath(p if p.is_absolute() else durable_base() / p)


def resolve_output_paths(cfg: DictConfig) -> None:
    """Make output_dir, run_dir and cache_dir absolute in `cfg` (so actors, resumed runs and the
    saved config.yaml all name the same folders) and log where they are."""
    for key in ("output_dir", "run_dir", "cache_dir"):
        cfg[key] = durable_path(cfg[key])
    why = f" (a Ray job: relative paths resolve under {durable_base()})" if in_ray_job() else ""
    log.info("run_dir: %s%s", cfg.run_dir, why)
    log.info("cache_dir: %s%s", cfg.cache_dir, why)


OmegaConf.register_new_resolver("durable_path", durable_path, replace=True)
