"""Command-line entry for a Hydra job: compose the config, run, print the summary as JSON."""
from __future__ import annotations

import json
import sys
from typing import Callable

import hydra
from omegaconf import DictConfig

import orchestrator.paths  # noqa: F401  registers the durable_path resolver of the configs' hydra dirs
from orchestrator.cluster import REPO_ROOT
from orchestrator.config import ConfigError


def hydra_entry(config_name: str, job: Callable[[DictConfig], dict]) -> None:
    """Run `job` under Hydra with conf/<config_name>.yaml; a ConfigError exits with its message,
    and the last line printed is the job's summary as one JSON object."""

    @hydra.main(config_path=str(REPO_ROOT / "conf"), config_name=config_name, version_base="1.3")
    def main(cfg: DictConfig) -> None:
        try:
            summary = job(cfg)
        except ConfigError as err:
            sys.exit(f"error: {err}")
        print(json.dumps(summary), flush=True)

    main()
