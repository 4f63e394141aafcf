"""Supervised warm start before RL, cached on disk by everything that determines its result.

RL sharpens what a policy can already sometimes do, so a random tiny model is first taught
the task's format on worked solutions. The result is a HF folder under cache_dir; a later
run with the same model, data and SFT settings loads it instead of training again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from core.models import replace_dir
from learners.prepare import build_sft_batch
from orchestrator.learner_group import LearnerGroup
from tasks.datasets import PromptStream

log = logging.getLogger("rewardmill")


def warm_start_folder(cfg, base_path: str) -> Path:
    # The learner's rank count, sharding and CPU thread count change float reduction order, so
    # the weights (measured: threads 1 vs 2 -> held-out accuracy 0.474 vs 0.502); torch's
    # version changes its kernels. A run that differs in any of them trains its own warm start.
    l = cfg.learner
    spec = {"base": base_path, "model": OmegaConf.to_container(cfg.model),
            "data": OmegaConf.to_container(cfg.data), "sft": OmegaConf.to_container(cfg.warm_start),
            "seed": cfg.seed, "learner": [l.num_ranks, l.strategy, l.threads],
            "torch": torch.__version__}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    return Path(cfg.cache_dir) / f"sft-{digest}"


def run_warm_start(cfg, cluster, learner_settings: dict, renderer, sft_data, base_path: str,
                   folder: Path) -> None:
    """SFT `cfg.warm_start.steps` steps on the worked solutions, then save to `folder`.

    Uses its own learner group (same ranks and strategy as RL, SFT learning rate), which
    is gone when this returns.
    """
    ws = cfg.warm_start
    settings = {**learner_settings, "lr": ws.lr, "warmup_steps": 0,
                "micro_batch_size": ws.micro_batch_size}
    learner = LearnerGroup(cluster, base_path, settings, cfg.learner.num_ranks,
                           use_reference=False, num_cpus=cfg.learner.num_cpus,
                           num_gpus=cfg.learner.num_gpus)
    try:
        stream = PromptStream(sft_data, seed=cfg.seed, shuffle=True)
        tokenizer = renderer.tokenizer
        eos = tokenizer.eos_token_id
        start, last = time.perf_counter(), {}
        for step in range(ws.steps):
            prompts = stream.next(ws.batch_size)
            batch = build_sft_batch(
                [renderer.encode(p.text) for p in prompts],
                [tokenizer(p.metadata["solution"], add_special_tokens=False)["input_ids"] + [eos]
                 for p in prompts],
                tokenizer.pad_token_id)
            last = learner.sft_step(cluster.put(batch))
            if (step + 1) % 50 == 0 or step + 1 == ws.steps:
                log.info("warm start step %d/%d  loss %.4f", step + 1, ws.steps, last["sft_loss"])
        tmp = folder.with_name(folder.name + ".tmp")
        learner.run("save", str(tmp), base_path)
    finally:
        learner.shutdown()
    replace_dir(tmp, folder)
    log.info("warm start done in %.1fs, final loss %.4f", time.perf_counter() - start,
             last.get("sft_loss", float("nan")))
