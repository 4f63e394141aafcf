"""Replay buffer: where annotated groups wait for the learner.

`ReplayBuffer` owns the bookkeeping every strategy shares (staleness filter, counters, state
for checkpoints); a strategy decides what is kept and what the next batch is. FIFO (on-policy)
is the one here; RoRecomp, SCOPE, pairing and curricula are further strategies behind the
same `add / next_batch / state_dict` methods.
"""
from __future__ import annotations

from collections import deque

from core.records import Sample, groups_of
from core.registry import lookup, register


@register("buffer", "fifo")
class FifoStrategy:
    """Groups leave in the order they arrived, `num_groups` at a time."""

    def __init__(self):
        self.queue: deque[list[Sample]] = deque()

    def add(self, groups: list[list[Sample]]) -> None:
        self.queue.extend(groups)

    def drop_if(self, predicate) -> int:
        kept = [g for g in self.queue if not predicate(g)]
        dropped = len(self.queue) - len(kept)
        self.queue = deque(kept)
        return dropped

    def take(self, num_groups: int) -> list[list[Sample]] | None:
        if len(self.queue) < num_groups:
            return None
        return [self.queue.popleft() for _ in range(num_groups)]

    def __len__(self) -> int:
        return len(self.queue)

    def state_dict(self) -> dict:
        return {"queue": list(self.queue)}

    def load_state_dict(self, state: dict) -> None:
        self.queue = deque(state["queue"])


class ReplayBuffer:
    def __init__(self, strategy: str = "fifo", max_staleness: int = 0, **strategy_options):
        """max_staleness: how many learner versions older than the current one a sample may
        be when it is trained on (0 = strictly on-policy)."""
        self.strategy = lookup("buffer", strategy)(**strategy_options)
        self.max_staleness = max_staleness
        self.uniform: list[list[Sample]] = []  # groups set aside by dynamic sampling
        self.counters = {"added_groups": 0, "served_groups": 0, "dropped_stale_groups": 0,
                         "dropped_uniform_groups": 0, "padded_uniform_groups": 0}

    def add(self, samples: list[Sample], drop_uniform: bool = False) -> int:
        """Queue the samples' groups. With `drop_uniform` (DAPO dynamic sampling), groups
        whose rewards are all equal carry no signal and are set aside instead."""
        groups = groups_of(samples)
        self.counters["added_groups"] += len(groups)
        if drop_uniform:
            uniform = [g for g in groups if len({s.reward for s in g}) == 1]
            groups = [g for g in groups if len({s.reward for s in g}) > 1]
            self.uniform += uniform
            self.counters["dropped_uniform_groups"] += len(uniform)
        self.strategy.add(groups)
        return len(self.strategy)

    def next_batch(self, num_groups: int, current_version: int,
                   pad_with_uniform: bool = True) -> list[Sample] | None:
        """`num_groups` whole groups, or None when too few fresh groups are waiting. With
        `pad_with_uniform`, a shortfall is made up from groups set aside as uniform (they
        have zero advantage under group baselines, so they only keep the batch's shape)."""
        oldest = current_version - self.max_staleness
        self.counters["dropped_stale_groups"] += self.strategy.drop_if(
            lambda g: min(s.policy_version for s in g) < oldest)
        shortfall = num_groups - len(self.strategy)
        if shortfall > 0:
            if not pad_with_uniform or shortfall > len(self.uniform):
                return None
            self.strategy.add(self.uniform[:shortfall])
            self.counters["padded_uniform_groups"] += shortfall
        groups = self.strategy.take(num_groups)
        self.uniform = []
        self.counters["served_groups"] += len(groups)
        return [s for g in groups for s in g]

    def stats(self) -> dict[str, float]:
        return {f"buffer/{k}": float(v) for k, v in self.counters.items()} | {
            "buffer/waiting_groups": float(len(self.strategy))}

    def state_dict(self) -> dict:
        return {"strategy": self.strategy.state_dict(), "counters": dict(self.counters),
                "uniform": self.uniform}

    def load_state_dict(self, state: dict) -> None:
        self.strategy.load_state_dict(state["strategy"])
        self.counters = dict(state["counters"])
        self.uniform = state.get("uniform", [])
