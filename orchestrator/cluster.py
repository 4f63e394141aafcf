"""Where components run, behind one small interface, so the scheduler has one code path.

  cluster=inline  every component is a plain object in this process (breakpoints work)
  cluster=local   a Ray instance started by this job on this machine; components are actors
  cluster=ray     an existing Ray cluster (address=auto, as under `ray job submit`)

`spawn(cls, ...)` gives a `Handle`; `handle.call(method, ...)` returns a future; `get`
resolves futures. Futures may be passed as arguments to other calls: under Ray the data
then moves actor-to-actor without passing through the driver.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Ready:
    """An inline 'future': the value is already there."""
    value: Any


def _unwrap(x):
    return x.value if isinstance(x, Ready) else x


class Handle:
    def __init__(self, target: Any, remote: bool):
        self.target, self.remote = target, remote

    def call(self, method: str, *args, **kwargs):
        if self.remote:
            return getattr(self.target, method).remote(*args, **kwargs)
        args = [_unwrap(a) for a in args]
        kwargs = {k: _unwrap(v) for k, v in kwargs.items()}
        return Ready(getattr(self.target, method)(*args, **kwargs))


class Cluster:
    def __init__(self, mode: str, address: str | None = None, num_cpus: int | None = None,
                 env_vars: dict[str, str] | None = None):
        if mode not in ("inline", "local", "ray"):
            raise ValueError(f"cluster.mode={mode!r}: choose inline, local or ray")
        self.mode = mode
        if mode == "inline":
            return
        import ray
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                           os.environ.get("PYTHONPATH")]))}
        env.update(env_vars or {})
        if mode == "local":
            ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env={"env_vars": env},
                     log_to_driver=True, configure_logging=False)
        else:
            ray.init(address=address or "auto", runtime_env={"env_vars": env})

    @property
    def remote(self) -> bool:
        return self.mode != "inline"

    def spawn(self, cls, *args, num_cpus: float = 0, num_gpus: float = 0, **kwargs) -> Handle:
        if not self.remote:
            return Handle(cls(*args, **kwargs), remote=False)
        import ray
        actor = ray.remote(cls).options(num_cpus=num_cpus, num_gpus=num_gpus,
                                        max_concurrency=1).remote(*args, **kwargs)
        return Handle(actor, remote=True)

    def get(self, futures):
        """Resolve one future or a list of them."""
        if isinstance(futures, list):
            if self.remote:
                import ray
                return ray.get(futures)
            return [_unwrap(f) for f in futures]
        return self.get([futures])[0]

    def put(self, value):
        if self.remote:
            import ray
            return ray.put(value)
        return Ready(value)

    def kill(self, handle: Handle) -> None:
        if handle.remote:
            import ray
            ray.kill(handle.target)

    def shutdown(self) -> None:
        if self.remote:
            import ray
            ray.shutdown()

