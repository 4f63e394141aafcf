"""Reward models a run needs but does not have yet, trained before RL and cached on disk.

A `reward_model` or `cooper` source with `kwargs.path: null` gets a Bradley-Terry reward model
trained on preference pairs (reward_model.pairs_path, or the toy task's own: the worked solution
against the same with one digit wrong), starting from the warm-started policy's body. The folder under cache_dir is
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


def preference_data(cfg) -> dict:
    """The pairs the reward model learns from: the user's file (reward_model.pairs_path), or
    the pairs a toy task builds itself (its worked solution vs the same with one digit wrong)."""
    rm = cfg.reward_model
    if rm.pairs_path:
        return {"source": "file", "file": {
            "train_path": rm.pairs_path, "eval_path": rm.eval_pairs_path, "prompt_field": "prompt",
            "chosen_field": "chosen", "rejected_field": "rejected"}}
    if cfg.data.source == "toy":
        return {"source": "toy", "toy": OmegaConf.to_container(cfg.data.toy)}
    raise ValueError(f"a reward source has kwargs.path: null, which trains a reward model first, "
                     f"but data.source={cfg.data.source} builds no preference pairs: set "
                     "reward_model.pairs_path (JSONL/Parquet rows with prompt, chosen, rejected) "
                     "or give the source a trained RM in kwargs.path")


def trained_reward_model(cfg, cluster, policy: str) -> Path:
    rm = cfg.reward_model
    data = preference_data(cfg)
    spec = {"policy": policy, "train": OmegaConf.to_container(rm), "data": data, "seed": cfg.seed}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(cfg.cache_dir) / f"rm-{digest}"
    if folder.exists():
        log.info("reward model: reusing %s", folder)
        return folder
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
        "data": data})
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
