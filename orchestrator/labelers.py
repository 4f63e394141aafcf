"""The shared ONI labelers of a run: one per labeler name the `oni` reward sources use,
started before the reward workers (which find it by name), checkpointed with the run and
logged every step (actors/labeler.py). Each appends the judge's labels to
run_dir/labels/<name>.jsonl, which a restarted labeler reads back."""
from __future__ import annotations

import math
from pathlib import Path

from omegaconf import OmegaConf

from actors.labeler import DEFAULT_NAME, OniReward, spawn_labeler

ONI_FUNCTIONS = ("oni", "actors.labeler.OniReward")


class Labelers:
    def __init__(self, cfg, cluster):
        self.cluster = cluster
        self.handles: dict[str, object] = {}   # name -> Ray actor handle, or the Labeler inline
        for source in OmegaConf.to_container(cfg.reward.sources, resolve=True):
            if source["fn"] not in ONI_FUNCTIONS:
                continue
            own, labeler_kwargs = OniReward.split_kwargs(source.get("kwargs") or {})
            name = own.get("labeler") or DEFAULT_NAME
            labeler_kwargs.setdefault("label_log", str(Path(cfg.run_dir) / "labels" / f"{name}.jsonl"))
            if name not in self.handles:
                self.handles[name] = spawn_labeler(labeler_kwargs, name=name,
                                                   remote=cluster.remote,
                                                   max_restarts=cfg.cluster.actor_restarts)

    def _call(self, name: str, method: str, *args):
        handle = self.handles[name]
        if not self.cluster.remote:
            return getattr(handle, method)(*args)
        return self.cluster.get(getattr(handle, method).remote(*args))

    def metrics(self) -> dict[str, float]:
        """labeler/<counter> (hits, misses, pending, dropped, labeled, ...; actors/labeler.py
        Labeler.stats), prefixed with the labeler's name when there are several."""
        out = {}
        for name in self.handles:
            prefix = "labeler/" if len(self.handles) == 1 else f"labeler/{name}/"
            out.update({prefix + k: float(v) for k, v in self._call(name, "stats").items()
                        if math.isfinite(v)})   # last_loss is NaN before any training
        return out

    def state_dict(self) -> dict:
        return {name: self._call(name, "state_dict") for name in self.handles}

    def load_state_dict(self, state: dict) -> None:
        for name, part in state.items():
            if name in self.handles:
                self._call(name, "load_state_dict", part)

    def close(self) -> None:
        from actors.labeler import LOCAL_LABELERS
        for name, handle in self.handles.items():
            if self.cluster.remote:
                import ray
                ray.kill(handle)
            else:
                handle.close()
                LOCAL_LABELERS.pop(name, None)
