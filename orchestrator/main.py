"""Compose a run from its config: check it, start the cluster, warm-start, train, report."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import fields
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from core.models import build_tiny_policy, load_tokenizer
from learners.config import PolicyLossConfig
from learners.worker import LearnerSettings
from orchestrator.checkpoint import Checkpoints
from orchestrator.cluster import Cluster
from orchestrator.config import validate
from orchestrator.judge_server import start_judge
from orchestrator.learner_group import LearnerGroup
from orchestrator.metrics import MetricsSink, read_history
from orchestrator.paths import resolve_output_paths
from orchestrator.pipeline import Pipeline
from orchestrator.report import plot_run, summary_table
from orchestrator.scheduler import Scheduler
from orchestrator.streaming import StreamingScheduler
from orchestrator.reward_model_prep import ensure_reward_models
from orchestrator.warm_start import run_warm_start, warm_start_folder
from orchestrator.preflight import preflight
from orchestrator.prompt_selection import make_prompt_selector
from tasks.datasets import PromptStream
from tasks.sources import load_prompts

log = logging.getLogger("rewardmill")


def run(cfg: DictConfig) -> dict:
    start = time.perf_counter()
    validate(cfg)
    logging.basicConfig(level=cfg.logging.level, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    resolve_output_paths(cfg)   # absolute, and never inside a Ray job's temporary working dir
    run_dir = prepare_run_dir(cfg)
    checkpoints = Checkpoints(run_dir, cfg.checkpoint.keep)
    cluster = Cluster(cfg.cluster.mode, cfg.cluster.address, cfg.cluster.num_cpus or needed_cpus(cfg),
                      actor_env(cfg))
    learner = pipeline = sink = judge = None
    try:
        base = base_model(cfg)
        tokenizer = load_tokenizer(base)
        task = load_prompts(OmegaConf.to_container(cfg.data, resolve=True), cfg.seed,
                            cfg.eval.num_prompts, tokenizer, cfg.warm_start.steps)
        preflight(cfg, task)
        settings = learner_settings(cfg)
        policy = base
        if cfg.warm_start.steps:
            policy = str(warm_start_folder(cfg, base))
            if not Path(policy).exists():
                log.info("warm start: %d SFT steps -> %s", cfg.warm_start.steps, policy)
                run_warm_start(cfg, cluster, settings, task.renderer, task.sft, base, Path(policy))
            else:
                log.info("warm start: reusing %s", policy)
        ensure_reward_models(cfg, cluster, policy)
        judge = start_judge(cfg, policy, base)
        learner = LearnerGroup(cluster, policy, settings, cfg.learner.num_ranks,
                               use_reference=uses_reference(cfg),
                               num_cpus=cfg.learner.num_cpus, num_gpus=cfg.learner.num_gpus)
        pipeline = Pipeline(cfg, cluster, policy, learner, task.renderer.add_special_tokens)
        sink = MetricsSink(run_dir, cfg.logging, cfg.run_name, OmegaConf.to_container(cfg))
        scheduler_class = StreamingScheduler if cfg.scheduler.mode == "async" else Scheduler
        prompts = PromptStream(task.train, cfg.seed, cfg.data.shuffle)
        if cfg.buffer.prompts.kind != "stream":   # pairing, curriculum: chosen by their success
            prompts = make_prompt_selector(OmegaConf.to_container(cfg.buffer.prompts), prompts,
                                           cfg.rollout.responses_per_prompt, cfg.seed)
        scheduler = scheduler_class(cfg, pipeline, prompts, task.held_out, tokenizer.pad_token_id,
                                    sink, checkpoints, base)
        scheduler.judge = judge
        if cfg.resume and checkpoints.latest():
            scheduler.restore(checkpoints.latest())
        scheduler.run()
        summary = summarise(cfg, scheduler, run_dir, time.perf_counter() - start)
    finally:
        if sink:
            sink.close()
        if pipeline:
            pipeline.shutdown()
        if learner:
            learner.shutdown()
        if judge:
            judge.stop()
        cluster.shutdown()
    return summary


def actor_env(cfg) -> dict[str, str]:
    """Environment variables of every actor process. Async stages share the cores: a torch
    thread waiting for work must sleep, not spin (OpenMP's default spins for a while, which
    on 2 cores cost the async main job 20% of its throughput)."""
    if cfg.scheduler.mode == "async" and "OMP_WAIT_POLICY" not in os.environ:
        return {"OMP_WAIT_POLICY": "PASSIVE"}
    return {}


def prepare_run_dir(cfg) -> Path:
    run_dir = Path(cfg.run_dir)
    previous = [p for p in ("checkpoints", "metrics.jsonl") if (run_dir / p).exists()]
    if previous and not cfg.resume:
        # Never lose a finished run: a fresh run moves the old outputs aside.
        aside = run_dir.with_name(f"{run_dir.name}.previous-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.move(str(run_dir), aside)
        log.warning("run_dir %s held an earlier run; moved it to %s (resume=true continues it)",
                    run_dir, aside)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return run_dir


def needed_cpus(cfg) -> int:
    """Logical CPUs for a local Ray instance: enough for every actor the config asks for."""
    want = (cfg.rollout.num_workers * cfg.rollout.num_cpus
            + cfg.learner.num_ranks * cfg.learner.num_cpus + 2)
    return max(int(want + 0.999), os.cpu_count() or 1)


def base_model(cfg) -> str:
    if cfg.model.path:
        return str(cfg.model.path)
    arch = OmegaConf.to_container(cfg.model.tiny)
    digest = hashlib.sha256(json.dumps([arch, cfg.seed], sort_keys=True).encode()).hexdigest()[:12]
    return str(build_tiny_policy(Path(cfg.cache_dir) / f"tiny-{digest}", arch, cfg.seed))


def learner_settings_common(cfg) -> dict:
    """Learner settings that do not depend on the RL algorithm: every field of `learner:`
    (learners/config.py LearnerConfig, which LearnerSettings extends) and each LearnerSettings
    field that names the config key it comes from (`from`: model.dtype, seed, rollout.temperature)."""
    settings = OmegaConf.to_container(cfg.learner, resolve=True)
    for f in fields(LearnerSettings):
        key = f.metadata.get("from")
        if key and OmegaConf.select(cfg, key) is not None:
            settings[f.name] = OmegaConf.select(cfg, key)
    return settings


ASYNC_TIS_CAP = 2.0   # algorithm.tis_cap when async mode trains stale samples and none is set


def learner_settings(cfg) -> dict:
    """learner_settings_common plus the fields of `algorithm:` a learner rank reads
    (learners/config.py PolicyLossConfig) and LaSeR's loss, when reward.laser is set."""
    from learners.prepare import laser_loss_settings
    algorithm = OmegaConf.to_container(cfg.algorithm, resolve=True)
    if (algorithm["tis_cap"] is None and algorithm["recompute_old_logprobs"]
            and cfg.scheduler.mode == "async" and cfg.buffer.max_staleness > 0):
        # stale samples need the correction: without it, async runs of the main job with
        # max_staleness 1 lost most of their accuracy gain (0.44 -> 0.49; with it 0.76)
        algorithm["tis_cap"] = ASYNC_TIS_CAP
    laser = cfg.reward.laser
    return dict(**learner_settings_common(cfg),
                **{f.name: algorithm[f.name] for f in fields(PolicyLossConfig)},
                laser=None if laser is None else laser_loss_settings(
                    OmegaConf.to_container(laser), OmegaConf.to_container(cfg.reward.sources)))


def uses_reference(cfg) -> bool:
    return cfg.algorithm.kl_coef > 0 or cfg.algorithm.kl_in_reward_coef > 0


def summarise(cfg, scheduler: Scheduler, run_dir: Path, wall_s: float) -> dict:
    history = read_history(run_dir / "metrics.jsonl")
    train = [m for m in history.values() if "reward/combined" in m]
    evals = scheduler.evals
    summary = {
        "accuracy_before": evals.get(0, float("nan")),
        "accuracy_after": evals[max(evals)] if evals else float("nan"),
        "steps": scheduler.step,
        "wall_s": round(wall_s, 1),
        "reward_first": train[0]["reward/combined"] if train else float("nan"),
        "reward_last": train[-1]["reward/combined"] if train else float("nan"),
        "step_time_mean_s": sum(m["time/step"] for m in train) / max(len(train), 1),
        "run_dir": str(run_dir),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    if cfg.logging.plot:
        plot_run(history, run_dir / "summary.png")
    print("\n" + summary_table(summary), flush=True)
    return summary
