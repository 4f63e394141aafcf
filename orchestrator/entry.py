"""Command-line entry for a Hydra job: compose the config, run, print the summary as JSON."""
from __future__ import annotations

import json
import sys
from typing import Callable

import hydra
from omegaconf import DictConfig, OmegaConf

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

    try:
        main()
    except SystemExit as exit_:
        # Hydra reports a failed composition with OmegaConf's own words; the commonest one here
        # ("Unexpected type for root: NoneType") means a key was set under a block the chosen
        # options leave null: say so, naming the key and the fix.
        hint = exit_.code not in (0, None) and null_block_override(config_name, sys.argv[1:])
        if hint:
            sys.exit(f"error: {hint}")
        raise


def null_block_override(config_name: str, args: list[str]) -> str | None:
    """The message for a `key=value` override whose parent block is null with the chosen
    group options (reward.laser without reward=laser, data.toy_code without data=toy_code)."""
    from hydra import compose, initialize_config_dir
    groups = [a for a in args if "=" in a and "." not in a.split("=", 1)[0] and a[0] not in "+~-"]
    try:
        with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
            cfg = compose(config_name, overrides=groups)
    except Exception:
        return None
    for arg in args:
        parts = arg.split("=", 1)[0].lstrip("+~").split(".")
        for depth in range(1, len(parts)):
            block = ".".join(parts[:depth])
            if OmegaConf.select(cfg, block, default="<absent>") is None:
                return (f"config {'.'.join(parts)}: {block} is null with the chosen options, so "
                        f"nothing under it can be set; choose the option that provides it (e.g. "
                        f"reward=laser, data=toy_code, data=humaneval, a model with model.tiny) "
                        f"or give the whole block in your own option file")
    return None
