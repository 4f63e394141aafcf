"""Reward annotation: run the configured reward sources on finished samples.

Each source is a callable found by name (core.registry, kind "reward") or dotted path:
  scope "sample": fn(sample, **kwargs) -> score
  scope "group":  fn(samples_of_one_group, **kwargs) -> list of scores, one per sample
  scope "batch":  fn(all_samples_of_the_call, **kwargs) -> list of scores (cross-group
                  methods, e.g. Co-Reward's twin prompts, or one batched model call)
A name that refers to a class is a stateful source: the worker builds it once with the
source's kwargs and calls the instance like a function; if it has `state_dict()` and
`load_state_dict()`, that state is saved in checkpoints (a co-trained reward model, say).
A source with `runs_on: policy` needs the current policy (self-certainty, RLPR, LaSeR): the
rollout worker runs it right after generation with the same weights, passing `policy=` a
`PolicyScorer`; the reward worker keeps its scores and only combines them.
A score is a number, or, for a source with granularity "step", a list with one number per
step of `sample.steps`. Every source's score is kept in `sample.rewards[name]` (a step
source's steps in `sample.step_scores[name]`, their `step_reduce` in `sample.rewards[name]`).
The combined reward is `reward.combine(sample, sources)`, by default the weighted sum of the
sources whose gate is open (a gate makes a source count only when another one passes). A call that raises, returns a non-finite number, or runs past its timeout does not stop
the run: each affected sample gets the source's `failure_value`, a flag saying why, and is
counted in the step's metrics.
"""
from __future__ import annotations

import concurrent.futures as cf
import logging
import math
import queue
import threading
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

from omegaconf import MISSING

from actors.restart_state import restore_after_restart
from core.records import Sample, groups_of
from core.registry import lookup, register
from core.schema import checked, problems

log = logging.getLogger("rewardmill.reward")

SCOPES, PLACES = ("sample", "group", "batch"), ("reward", "policy")

STEP_REDUCE = {"mean": lambda v: sum(v) / len(v) if v else 0.0, "min": lambda v: min(v, default=0.0),
               "max": lambda v: max(v, default=0.0), "sum": sum, "last": lambda v: v[-1] if v else 0.0}


@dataclass
class Gate:
    """A source with a gate counts in the combined reward only when another source passes."""

    source: str = MISSING           # name of the source that opens the gate
    min: float = 1.0                # it opens when that source scores >= min


@dataclass
class RewardSource:
    """One entry of `reward.sources` (the config schema's type for it, orchestrator/schema.py,
    and what the reward worker runs): every field's default and meaning is here."""

    name: str                       # key in sample.rewards and in the logs (reward/<name>)
    fn: str                         # registered reward name (rewards/, tasks/) or dotted import path
    weight: float = 1.0             # factor in the combined reward; 0 = logged (and read by name) only
    scope: str = checked("sample", choices=SCOPES)  # sample: fn(sample); group: fn(samples of one
                                    # prompt, all G); batch: fn(all samples of the call)
    runs_on: str = checked("reward", choices=PLACES)  # reward: the reward worker; policy: the rollout
                                    # worker, with the weights that sampled (policy-coupled rewards)
    timeout_s: float = checked(10.0, gt=0)  # wall seconds one call may take before the sample is flagged
    failure_value: float = 0.0      # score of a flagged sample (raised, timed out, bad value)
    granularity: str = checked("response", choices=("response", "step"))  # response: one number;
                                    # step: one per sample.steps (needs rollout.step_delimiter)
    step_reduce: str = checked("mean", choices=tuple(STEP_REDUCE))  # a step source's scalar in
                                    # sample.rewards: mean | min | max | sum | last of its steps
    gate: Optional[Gate] = None     # {source: name, min: x}: counts only when that source >= x
    kwargs: Dict[str, Any] = field(default_factory=dict)  # extra keyword arguments for fn (a class:
                                    # for its constructor)

    def __post_init__(self):
        if isinstance(self.gate, dict):
            self.gate = Gate(**self.gate)

    def contribution(self, sample: Sample) -> float:
        if self.gate and sample.rewards[self.gate.source] < self.gate.min:
            return 0.0
        return self.weight * sample.rewards[self.name]


@register("combine", "weighted_sum")
def weighted_sum(sample: Sample, sources: list[RewardSource]) -> float:
    """sum_k weight_k * score_k over the sources whose gate (if any) is open."""
    return sum(src.contribution(sample) for src in sources)


class RewardWorker:
    """Scores samples with the sources that run on it (`runs_on`), then combines every
    source. With `context` (e.g. {"policy": scorer}) it is the rollout worker's runner of
    the policy-side sources: those get the context as keyword arguments and nothing is combined."""

    def __init__(self, sources: list[dict], threads_per_source: int = 4,
                 combine: str = "weighted_sum", context: dict | None = None,
                 state_file: str | None = None):
        if not sources:
            raise ValueError("reward.sources is empty: list at least one reward source")
        self.sources = [RewardSource(**s) for s in sources]
        for s in self.sources:
            for key, value, why in problems(RewardSource, s):
                raise ValueError(f"reward source {s.name!r}: {key}={value!r}: {why}")
        names = [s.name for s in self.sources]
        for s in self.sources:
            if s.gate and s.gate.source not in names:
                raise ValueError(f"reward source {s.name!r}: gate source {s.gate.source!r} "
                                 f"is not one of {names}")
        self.context = context
        self.place = "policy" if context is not None else "reward"
        self.mine = [s for s in self.sources if s.runs_on == self.place]
        self.functions: dict[str, Callable] = {}
        self.call_kwargs: dict[str, dict] = {}
        for s in self.mine:
            fn = lookup("reward", s.fn)
            stateful = isinstance(fn, type)  # built once; its kwargs go to the constructor
            self.functions[s.name] = fn(**s.kwargs) if stateful else fn
            self.call_kwargs[s.name] = ({} if stateful else dict(s.kwargs)) | (context or {})
        self.combine = lookup("combine", combine)
        self.threads = threads_per_source
        self.pools = {s.name: self._new_pool() for s in self.mine}
        self.busy_s = 0.0
        restore_after_restart(self, state_file)   # state_file: actors/restart_state.py

    def state_dict(self) -> dict:
        """The state of stateful sources (checkpointed with the run)."""
        return {name: fn.state_dict() for name, fn in self.functions.items()
                if hasattr(fn, "state_dict")}

    def load_state_dict(self, state: dict) -> None:
        for name, part in state.items():
            self.functions[name].load_state_dict(part)

    def _new_pool(self) -> "DaemonPool":
        return DaemonPool(self.threads)

    def vitals(self) -> dict:
        """Seconds spent scoring since this process started, and its PID (a new PID: the
        worker was restarted). The scheduler reads it as the stage's busy share."""
        return {"busy_s": self.busy_s, "pid": os.getpid()}

    def score(self, samples: list[Sample], learn: bool = True) -> list[Sample]:
        """Score and combine. learn=False (held-out evaluation): sources that learn from what
        they score (`learning` attribute, e.g. Cooper's RM) only score."""
        start = time.perf_counter()
        try:
            return self._score(samples, learn)
        finally:
            self.busy_s += time.perf_counter() - start

    def _score(self, samples: list[Sample], learn: bool) -> list[Sample]:
        for fn in self.functions.values():
            if hasattr(fn, "learning"):
                fn.learning = learn
        for source in self.mine:
            self._run_source(source, samples)
        if self.place == "reward":
            for source in self.sources:
                if source.runs_on == "policy":
                    self._require_policy_scores(source, samples)
            for s in samples:
                s.reward = float(self.combine(s, self.sources))
        return samples

    def _require_policy_scores(self, source: RewardSource, samples: list[Sample]) -> None:
        """A policy-side score missing (the rollout worker did not run it) is a flag, not a KeyError."""
        missing = [s for s in samples if source.name not in s.rewards]
        if missing:
            self._fail(source, missing, "no score from the rollout worker (runs_on: policy)")

    def _run_source(self, source: RewardSource, samples: list[Sample]) -> None:
        fn, pool = self.functions[source.name], self.pools[source.name]
        kwargs = self.call_kwargs[source.name]
        units = {"sample": lambda: [[s] for s in samples], "group": lambda: groups_of(samples),
                 "batch": lambda: [samples] if samples else []}[source.scope]()
        call = (lambda u: [fn(u[0], **kwargs)]) if source.scope == "sample" else (
            lambda u: fn(u, **kwargs))
        futures = [pool.submit(call, unit) for unit in units]
        failures: list[str] = []
        # Calls queue behind one another, so the whole set gets one timeout per wave of threads.
        waves = math.ceil(len(units) / self.threads)
        done, late = cf.wait(futures, timeout=source.timeout_s * waves)
        for unit, fut in zip(units, futures):
            if fut in late:
                failures += self._fail(source, unit, f"timeout after {source.timeout_s:g}s")
                continue
            try:
                scores = list(fut.result())
                if len(scores) != len(unit):
                    raise ValueError(f"returned {len(scores)} scores for {len(unit)} samples")
                scores = [self._check(source, s, x) for s, x in zip(unit, scores)]
            except Exception as err:  # the reward code is not ours: any error is a flag
                failures += self._fail(source, unit, f"{type(err).__name__}: {err}")
                continue
            for s, x in zip(unit, scores):
                if source.granularity == "step":
                    s.step_scores[source.name] = x
                    x = STEP_REDUCE[source.step_reduce](x)
                s.rewards[source.name] = x
        if failures:
            log.warning("reward source %r flagged %d of %d samples (scored %g); first: %s",
                        source.name, len(failures), len(samples), source.failure_value,
                        failures[0])
        if late:
            # Threads stuck in a hung call cannot be killed; give new calls fresh threads.
            pool.shutdown()
            self.pools[source.name] = self._new_pool()

    @staticmethod
    def _check(source: RewardSource, sample: Sample, score):
        """A finite float, or for a step source a list of them, one per step."""
        if source.granularity == "step":
            values = [float(v) for v in score]
            if sample.steps is None or len(values) != len(sample.steps):
                raise ValueError(f"step source returned {len(values)} scores for "
                                 f"{len(sample.steps or [])} steps (set rollout.step_delimiter)")
        else:
            values = [float(score)]
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"returned {score!r}; expected finite numbers")
        return values if source.granularity == "step" else values[0]

    @staticmethod
    def _fail(source: RewardSource, unit: list[Sample], why: str) -> list[str]:
        for s in unit:
            s.rewards[source.name] = source.failure_value
            s.flags[source.name] = why
            if source.granularity == "step":
                s.step_scores[source.name] = [source.failure_value] * len(s.steps or [])
        return [f"{s.prompt_id}: {why}" for s in unit]


class DaemonPool:
    """A fixed set of daemon threads running submitted calls.

    Unlike ThreadPoolExecutor, a thread stuck in a hung reward call neither blocks the
    process from exiting nor is joined at shutdown; it is simply abandoned.
    """

    def __init__(self, threads: int):
        self.tasks: queue.Queue = queue.Queue()
        self.threads = threads
        for _ in range(threads):
            threading.Thread(target=self._work, daemon=True, name="reward").start()

    def submit(self, fn, *args) -> cf.Future:
        future: cf.Future = cf.Future()
        self.tasks.put((future, fn, args))
        return future

    def _work(self) -> None:
        while (task := self.tasks.get()) is not None:
            future, fn, args = task
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as err:  # handed to the caller through the future
                future.set_exception(err)

    def shutdown(self) -> None:
        """Cancel queued calls and let idle threads exit (hung ones stay abandoned)."""
        while not self.tasks.empty():
            task = self.tasks.get_nowait()
            if task:
                task[0].cancel()
        for _ in range(self.threads):
            self.tasks.put(None)


def reward_metrics(samples: list[Sample], source_names: list[str]) -> dict[str, float]:
    """Mean of each source and of the combined reward, and flagged counts per source."""
    n = max(len(samples), 1)
    out = {"reward/combined": sum(s.reward or 0.0 for s in samples) / n}
    for name in source_names:
        out[f"reward/{name}"] = sum(s.rewards.get(name, 0.0) for s in samples) / n
        out[f"reward/flagged/{name}"] = float(sum(name in s.flags for s in samples))
    out["reward/flagged_samples"] = float(sum(s.flagged for s in samples))
    return out
