"""Stateful reward sources survive their worker's death.

Ray brings a killed actor back by running its constructor again, which would start a
co-trained reward model, a running statistic or a baseline cache from scratch in the middle of
a run. So at every checkpoint the pipeline also writes each worker's state to a file of its own
(`save_worker_state`), and a worker whose process Ray restarted loads that file before it
serves any call (`restore_after_restart`): the state of the last checkpoint, as `resume=true`
would give it. With several nodes the run directory must be shared, as checkpoints need.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("rewardmill")


def save_worker_state(path: str | Path, step: int, state: dict) -> None:
    """Write one worker's state as of checkpoint `step` (atomically: a reader never sees half)."""
    import torch
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"step": step, "state": state}, tmp)
    os.replace(tmp, path)


def restarted_by_ray() -> bool:
    """Whether this process is a Ray actor brought back after its previous process died."""
    try:
        import ray
        return ray.is_initialized() and ray.get_runtime_context().was_current_actor_reconstructed
    except (ImportError, RuntimeError):   # not under Ray, or not in an actor
        return False


def restore_after_restart(worker, path: str | Path | None) -> None:
    """If Ray restarted `worker`'s process, load the state saved at the last checkpoint into
    it (`worker.load_state_dict`); say so, or that there was none to load."""
    if not path or not restarted_by_ray():
        return
    path = Path(path)
    name = f"worker {path.stem}"
    if not path.exists():
        log.warning("%s restarted after its process died; no checkpoint holds its state yet, so "
                    "its stateful reward sources (if any) start again from their initial state",
                    name)
        return
    import torch
    saved = torch.load(path, weights_only=False)
    worker.load_state_dict(saved["state"])
    log.warning("%s restarted after its process died; its reward sources' state is that of the "
                "checkpoint of step %d (their updates since then are lost)", name, saved["step"])
