"""Shared test helpers: a tiny, fast config composed from the real conf/ tree."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Nothing in the tests may reach a hub or write caches into the home directory.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

TINY = [
    "model.tiny.hidden_size=32", "model.tiny.num_hidden_layers=2", "model.tiny.num_attention_heads=2",
    "model.tiny.num_key_value_heads=1", "model.tiny.intermediate_size=64",
    "data.prompts_per_step=4", "rollout.responses_per_prompt=4", "rollout.max_new_tokens=24",
    "learner.mini_batch_size=8", "learner.micro_batch_size=4", "learner.threads=1",
    "rollout.threads=1", "learner.lr=1e-3", "warm_start.steps=0", "steps=2", "eval.every=1",
    "eval.num_prompts=8", "checkpoint.every=1", "logging.wandb_mode=disabled",
    "logging.tensorboard=false", "logging.progress_bar=false", "logging.plot=false",
]


def compose(tmp_path: Path, *overrides: str):
    from hydra import compose as hydra_compose, initialize_config_dir
    from omegaconf import OmegaConf

    import orchestrator.schema  # noqa: F401  registers the config schema conf/ extends

    base = [f"output_dir={tmp_path}/outputs", f"cache_dir={tmp_path}/cache", *TINY]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = hydra_compose("config", overrides=base + list(overrides))
    OmegaConf.set_struct(cfg, True)
    return cfg


@pytest.fixture(autouse=True)
def _same_start_for_every_test():
    """Each test starts with the same RNG state and torch thread count, whatever ran before it
    in this process: in-process (inline) workers call torch.set_num_threads and reseed torch's
    global RNG, and the thread count changes float reduction order, so learning curves too."""
    import random

    import numpy as np
    import torch
    torch.set_num_threads(1)
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))


@pytest.fixture(scope="session")
def tiny_policies(tmp_path_factory):
    """Two tiny random Qwen2 policies (seeds 0 and 1, character tokenizer), built once."""
    from core.models import build_tiny_policy
    arch = {"model_type": "qwen2", "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 64,
            "max_position_embeddings": 128}
    root = tmp_path_factory.mktemp("tiny_policies")
    return [str(build_tiny_policy(root / f"policy{seed}", arch, seed=seed)) for seed in (0, 1)]
