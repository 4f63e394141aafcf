"""Stateful reward sources survive their worker's death.

Ray brings a killed actor back by running its constructor again, which would start a
co-trained reward model, a running statistic or a baseline cache from scratch in the middle of
a run. So at every checkpoint the pipeline also writes each worker's state to a file of its own
(`save_worker_state`), and a worker loads that file, where there is one, before it serves
any call (`restore_after_restart`): after a restart, the state of the last checkpoint, as
`resume=true` would give it. With several nodes the run directory must be shared, as checkpoints need.
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


def restore_after_restart(worker, path: str | Path | None) -> None:
    """Load the state saved at the last checkpoint into `worker` (`load_state_dict`) if there
    is one. A fresh run has none (an earlier run's folder is moved aside), so this is a worker
    Ray restarted, or one of a resumed run, which loads the same checkpoint right after."""
    if not path or not Path(path).exists():
        return
    import torch
    saved = torch.load(path, weights_only=False)
    worker.load_state_dict(saved["state"])
    log.warning("worker %s: its reward sources' state is that of the checkpoint of step %d "
                "(after a restart, their updates since then are lost)", Path(path).stem,
                saved["step"])
