"""Reward models a run needs but does not have yet, trained before RL and cached on disk.

A `reward_model` or `cooper` source with `kwargs.path: null` gets a Bradley-Terry reward model
trained on the task's preference pairs (toy task: the worked solution against the same with
one digit wrong), starting from the warm-started policy's body. The folder under cache_dir is
named by everything that decides the result, so later runs reuse it.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from omegaconf import OmegaConf

from core.models import replace_dir

log = logging.getLogger("rewardmill")

RM_SOURCES = ("reward_model", "cooper")


def ensure_reward_models(cfg, cluster, policy: str) -> None:
    """Fill `kwargs.path` of every RM source whose path is null (edits `cfg.reward.sources`)."""
    for source in cfg.reward.sources:
        if source.fn not in RM_SOURCES or source.get("kwargs", {}).get("path"):
            continue
        folder = trained_reward_model(cfg, cluster, policy)
        with _writable(cfg):
            source.kwargs.path = str(folder)


def trained_reward_model(cfg, cluster, policy: str) -> Path:
    rm = cfg.reward_model
    spec = {"policy": policy, "train": OmegaConf.to_container(rm), "toy": OmegaConf.to_container(cfg.data.toy),
            "seed": cfg.seed}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(cfg.cache_dir) / f"rm-{digest}"
    if folder.exists():
        log.info("reward model: reusing %s", folder)
        return folder
    if cfg.data.source != "toy":
        raise ValueError("a reward source has kwargs.path: null, which trains a reward model on "
                         "toy pairs; with data.source=file give it a trained RM "
                         "(scripts/train_preference.py loss=bradley_terry)")
    from orchestrator.preference import run_preference  # it imports main, which imports us
    work = Path(cfg.cache_dir) / f"rm-{digest}.work"
    job = OmegaConf.create({
        "seed": cfg.seed, "steps": rm.steps, "pairs_per_step": rm.pairs_per_step,
        "loss": "bradley_terry", "bradley_terry": {"margin": 0.0}, "eval_pairs": rm.eval_pairs,
        "run_dir": str(work), "cache_dir": cfg.cache_dir,
        "model": {**OmegaConf.to_container(cfg.model), "path": policy},
        "learner": {**OmegaConf.to_container(cfg.learner), "lr": rm.lr,
                    "micro_batch_size": rm.micro_batch_size, "warmup_steps": 0},
        "cluster": OmegaConf.to_container(cfg.cluster),
        "data": {"source": "toy", "toy": OmegaConf.to_container(cfg.data.toy)}})
    log.info("reward model: %d Bradley-Terry steps from %s -> %s", rm.steps, policy, folder)
    summary = run_preference(job, cluster)
    log.info("reward model: held-out pair accuracy %.3f -> %.3f",
             summary["eval_accuracy_before"], summary["eval_accuracy_after"])
    replace_dir(work / "reward_model", folder)
    return folder


class _writable:
    """Temporarily lift the struct/readonly flags Hydra sets on the config."""

    def __init__(self, cfg):
        self.cfg = cfg

    def __enter__(self):
        self.flags = OmegaConf.is_readonly(self.cfg), OmegaConf.is_struct(self.cfg)
        OmegaConf.set_readonly(self.cfg, False)
        OmegaConf.set_struct(self.cfg, False)

    def __exit__(self, *exc):
        OmegaConf.set_readonly(self.cfg, self.flags[0])
        OmegaConf.set_struct(self.cfg, self.flags[1])
