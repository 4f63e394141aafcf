"""Offline preference training with the RL learner group: DPO / SimPO train the policy,
Bradley-Terry trains a scalar reward model (saved to run_dir/reward_model, loadable by the
`reward_model` and `cooper` reward sources).

Rows 2k and 2k+1 of every batch are pair k's chosen and rejected response; DPO's reference
model is the starting policy.
"""
from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

from omegaconf import OmegaConf

from core.models import load_tokenizer
from core.preference_losses import PREFERENCE_LOSSES
from learners.prepare import build_pair_batch
from orchestrator.cluster import Cluster
from orchestrator.config import ConfigError
from orchestrator.learner_group import LearnerGroup
from orchestrator.main import base_model, learner_settings_common
from orchestrator.paths import resolve_output_paths
from tasks.toy_arith import ToyArithmetic, corrupt

log = logging.getLogger("rewardmill")


def toy_pairs(cfg, split: str, count: int, offset: int = 0) -> list[tuple[str, str, str]]:
    t = cfg.data.toy
    task = ToyArithmetic(t.min_digits, t.max_digits, t.operands, seed=cfg.seed)
    out = []
    for i in range(offset, offset + count):
        p = task.problem(split, i)
        out.append((p.prompt, p.solution, corrupt(p.solution, random.Random(f"{split}/{i}"))))
    return out


def file_pairs(cfg, path: str) -> list[tuple[str, str, str]]:
    import datasets
    f = cfg.data.file
    kind = "parquet" if path.endswith(".parquet") else "json"
    rows = datasets.load_dataset(kind, data_files=path, split="train")
    out = []
    for i, row in enumerate(rows):
        for field in (f.prompt_field, f.chosen_field, f.rejected_field):
            if not row.get(field):
                raise ConfigError(f"{path}: row {i}: field {field!r} is missing or empty")
        out.append((row[f.prompt_field], row[f.chosen_field], row[f.rejected_field]))
    return out


def validate(cfg) -> None:
    if cfg.loss not in PREFERENCE_LOSSES:
        raise ConfigError(f"config loss={cfg.loss!r}: choose one of {list(PREFERENCE_LOSSES)}")
    per_rank = 2 * cfg.pairs_per_step // cfg.learner.num_ranks
    for key, value in (("learner.micro_batch_size", cfg.learner.micro_batch_size),
                       ("2 * pairs_per_step / learner.num_ranks", per_rank)):
        if value % 2 or (key.startswith("2") and 2 * cfg.pairs_per_step % cfg.learner.num_ranks):
            raise ConfigError(f"config {key}={value}: must be even (pairs stay together)")
    if cfg.cluster.mode == "inline" and cfg.learner.num_ranks != 1:
        raise ConfigError("config learner.num_ranks: cluster=inline has one learner rank")


def run_preference(cfg, cluster: Cluster | None = None) -> dict:
    """Train on pairs; with `cluster` (a running one, e.g. the main job's) it is not shut down."""
    start = time.perf_counter()
    validate(cfg)
    if cluster is None:   # a job of its own (scripts/train_preference.py): durable, absolute paths
        resolve_output_paths(cfg)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    own_cluster = cluster is None
    if own_cluster:
        cluster = Cluster(cfg.cluster.mode, cfg.cluster.address, cfg.cluster.num_cpus)
    group = None
    try:
        base = base_model(cfg)
        tok = load_tokenizer(base)
        if cfg.data.source == "toy":
            train = toy_pairs(cfg, "train", cfg.steps * cfg.pairs_per_step)
            held_out = toy_pairs(cfg, "test", cfg.eval_pairs)
        else:
            train = file_pairs(cfg, cfg.data.file.train_path)
            held_out = file_pairs(cfg, cfg.data.file.eval_path) if cfg.data.file.eval_path else []
        random.Random(cfg.seed).shuffle(train)
        settings = {**learner_settings_common(cfg), "preference_loss": cfg.loss,
                    "preference_options": OmegaConf.to_container(cfg[cfg.loss])}
        group = LearnerGroup(cluster, base, settings, cfg.learner.num_ranks,
                             use_reference=cfg.loss == "dpo", num_cpus=cfg.learner.num_cpus,
                             num_gpus=cfg.learner.num_gpus)

        def batch_of(pairs):
            eos = [tok.eos_token_id]
            return cluster.put(build_pair_batch(
                [tok(p)["input_ids"] for p, _, _ in pairs],
                [tok(c)["input_ids"] + eos for _, c, _ in pairs],
                [tok(r)["input_ids"] + eos for _, _, r in pairs], tok.pad_token_id))

        evaluate = (lambda: group.run("preference_step", batch_of(held_out), False)[0]) \
            if held_out else (lambda: {})
        before = evaluate()
        history = []
        with open(run_dir / "metrics.jsonl", "w") as sink:
            for step in range(cfg.steps):
                pairs = [train[(step * cfg.pairs_per_step + k) % len(train)]
                         for k in range(cfg.pairs_per_step)]
                metrics = group.run("preference_step", batch_of(pairs))[0]
                sink.write(json.dumps({"step": step + 1, **metrics}) + "\n")
                history.append(metrics)
        after = evaluate()
        trained = run_dir / ("reward_model" if cfg.loss == "bradley_terry" else "policy")
        group.run("save", str(trained), base)
    finally:
        if group:
            group.shutdown()
        if own_cluster:
            cluster.shutdown()
    # a reward model is right when it scores the chosen response higher; a policy when it
    # gives the chosen response the higher mean log-prob per token
    accuracy = "accuracy" if cfg.loss == "bradley_terry" else "likelihood_accuracy"
    summary = {"loss": cfg.loss, "steps": cfg.steps, "model_dir": str(trained),
               "eval_accuracy_before": before.get(accuracy),
               "eval_accuracy_after": after.get(accuracy),
               "eval_margin_after": after.get("margin"),
               "train_loss_first": history[0]["loss"] if history else None,
               "train_loss_last": history[-1]["loss"] if history else None,
               "wall_s": round(time.perf_counter() - start, 1)}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
