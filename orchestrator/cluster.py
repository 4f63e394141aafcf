"""Where components run, behind one small interface, so the scheduler has one code path.

  cluster=inline  every component is a plain object in this process (breakpoints work)
  cluster=local   a Ray instance started by this job on this machine; components are actors
  cluster=ray     an existing Ray cluster (address=auto, as under `ray job submit`)

`spawn(cls, ...)` gives a `Handle`; `handle.call(method, ...)` returns a future; `get`
resolves futures. Futures may be passed as arguments to other calls: under Ray the data
then moves actor-to-actor without passing through the driver.

Every actor runs its calls one at a time, in the order they were sent, except calls made
with `control=True` (progress counters), which run on a thread of their own so they answer
while the actor is busy. An actor spawned with `restarts` > 0 comes back after its process
dies (SIGKILL, OOM); the calls it was running fail with an error `died` recognises, and
the caller decides what to send again (nothing is retried behind its back).
"""
from __future__ import annotations

import os
import time
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

    def call(self, method: str, *args, control: bool = False, **kwargs):
        if self.remote:
            bound = getattr(self.target, method)
            if control:
                bound = bound.options(concurrency_group="control")
            return bound.remote(*args, **kwargs)
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

    def spawn(self, cls, *args, num_cpus: float = 0, num_gpus: float = 0, restarts: int = 0,
              name: str | None = None, **kwargs) -> Handle:
        """An actor of `cls`; `restarts`: how often Ray brings it back after its process
        dies (-1: always); `name`: a Ray actor name others can look it up by."""
        if not self.remote:
            return Handle(cls(*args, **kwargs), remote=False)
        import ray
        actor = ray.remote(concurrency_groups={"control": 1})(cls).options(
            num_cpus=num_cpus, num_gpus=num_gpus, max_concurrency=1, name=name,
            max_restarts=restarts, max_task_retries=0,
        ).remote(*args, **kwargs)
        return Handle(actor, remote=True)

    def wait(self, futures: list, timeout: float | None = None) -> list[int]:
        """Indices of the futures that are done: blocks until at least one is, or `timeout`
        seconds passed (then possibly none)."""
        if not self.remote or not futures:
            return list(range(len(futures)))
        import ray
        done, _ = ray.wait(futures, num_returns=1, timeout=timeout, fetch_local=False)
        done_ids = {f.binary() for f in done}
        return [i for i, f in enumerate(futures) if f.binary() in done_ids]

    def wait_alive(self, handle: Handle, timeout_s: float = 300.0) -> None:
        """Block until a restarting actor answers again (calls sent while it restarts fail)."""
        if not handle.remote:
            return
        import ray
        from ray.exceptions import ActorUnavailableError
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                ray.get(handle.target.__ray_ready__.remote(), timeout=timeout_s)
                return
            except ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    @staticmethod
    def died(error: BaseException) -> bool:
        """Whether a call failed because its actor's process died (it may be restarting)."""
        try:
            from ray.exceptions import RayActorError
        except ImportError:
            return False
        return isinstance(error, RayActorError)

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

