"""Replay buffer: where annotated groups wait for the learner.

`ReplayBuffer` owns the bookkeeping every strategy shares (staleness filter, counters, state
for checkpoints); a strategy decides what is kept and what the next batch is (FIFO, on-policy,
is the one here). Once the scheduler has computed a served batch's advantages, the buffer may
recompose it into several optimizer steps (RoRecomp, actors/rorecomp.py); prompt selection
(pairing, curricula) happens before rollout, in orchestrator/prompt_selection.py, and SCOPE's
repairs between reward and buffer, in actors/repair.py.

A `GroupFilter` decides which groups are worth training on (DAPO dynamic sampling, RLPR's
std filter); the buffer sets the others aside and pads a batch with them only when the
scheduler's sampling rounds run out.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from core.records import Sample, groups_of
from core.registry import lookup, register
from actors.rorecomp import RoRecomp
from rewards.self_rewards import StdFilter, reward_std


# --- group filters -------------------------------------------------------------------------

class KeepAll:
    """No filter: every group is trained on."""

    ema = None

    def keep(self, group_rewards: list[list[float]], step: int) -> list[bool]:
        return [True] * len(group_rewards)

    def threshold(self, step: int) -> float | None:
        return None

    def update(self, step: int, group_rewards: list[list[float]]) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class DropUniform(KeepAll):
    """DAPO dynamic sampling: a group whose rewards are all equal has zero advantage."""

    def keep(self, group_rewards: list[list[float]], step: int) -> list[bool]:
        return [len(set(rewards)) > 1 for rewards in group_rewards]


GROUP_FILTER_RULES = {"none": KeepAll, "uniform": DropUniform, "std_ema": StdFilter}


class GroupFilter:
    """A keep/drop rule over groups, and the reward it reads (`source`: a reward source's
    name, or None for the combined reward). `step` is the step's number as logged
    (the first RL step is 1). The scheduler owns the filter and its state; the buffer only
    calls `keep`, with a copy under Ray."""

    def __init__(self, kind: str = "none", source: str | None = None, **rule_options):
        self.kind, self.source = kind, source
        self.rule = GROUP_FILTER_RULES[kind](**rule_options)

    @property
    def active(self) -> bool:
        return self.kind != "none"

    @property
    def ema(self) -> float | None:
        return self.rule.ema

    def rewards_of(self, group: list[Sample]) -> list[float]:
        return [s.reward if self.source is None else s.rewards[self.source] for s in group]

    def keep(self, groups: list[list[Sample]], step: int) -> list[bool]:
        return self.rule.keep([self.rewards_of(g) for g in groups], step)

    def threshold(self, step: int) -> float | None:
        return self.rule.threshold(step)

    def update(self, step: int, group_rewards: list[list[float]]) -> None:
        """Once per step, with the rewards of every group sampled in it (kept or not)."""
        self.rule.update(step, group_rewards)

    def state_dict(self) -> dict:
        return {"kind": self.kind, "rule": self.rule.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state["kind"] != self.kind:
            raise ValueError(f"checkpointed group filter is {state['kind']!r}, "
                             f"this run's is {self.kind!r}")
        self.rule.load_state_dict(state["rule"])


@dataclass
class Added:
    """What `ReplayBuffer.add` did with one share of samples."""
    kept: list[str] = field(default_factory=list)      # group ids queued for training
    dropped: list[str] = field(default_factory=list)   # group ids the filter set aside
    group_rewards: list[list[float]] = field(default_factory=list)  # the measured rewards, every group
    outcomes: list[tuple[str, list[float]]] = field(default_factory=list)  # every group's prompt id
                                                       # and combined rewards (prompt selection)


# --- strategies ------------------------------------------------------------------------------


def sampled_version(group: list[Sample]) -> int:
    """The oldest weights version that sampled any response of the group."""
    return min(s.policy_version for s in group)


@register("buffer", "fifo")
class FifoStrategy:
    """Groups leave oldest weights first, in the order they arrived among equals (with
    asynchronous rollouts a newer group can arrive first), `num_groups` at a time."""

    def __init__(self):
        self.queue: deque[list[Sample]] = deque()

    def add(self, groups: list[list[Sample]]) -> None:
        self.queue.extend(groups)

    def remove_if(self, predicate) -> list[list[Sample]]:
        removed = [g for g in self.queue if predicate(g)]
        self.queue = deque(g for g in self.queue if not predicate(g))
        return removed

    def groups(self) -> list[list[Sample]]:
        """The waiting groups (for statistics)."""
        return list(self.queue)

    def take(self, num_groups: int) -> list[list[Sample]] | None:
        if len(self.queue) < num_groups:
            return None
        self.queue = deque(sorted(self.queue, key=sampled_version))   # stable
        return [self.queue.popleft() for _ in range(num_groups)]

    def __len__(self) -> int:
        return len(self.queue)

    def state_dict(self) -> dict:
        return {"queue": list(self.queue)}

    def load_state_dict(self, state: dict) -> None:
        self.queue = deque(state["queue"])


class ReplayBuffer:
    def __init__(self, strategy: str = "fifo", max_staleness: int = 0,
                 rorecomp: dict | None = None, **strategy_options):
        """max_staleness: how many learner versions older than the current one a sample may
        be when it is trained on (0 = strictly on-policy). rorecomp: RoRecomp's options
        (actors/rorecomp.py), or None to train every served batch as it is."""
        self.strategy = lookup("buffer", strategy)(**strategy_options)
        self.max_staleness = max_staleness
        self.recomposer = RoRecomp(**rorecomp) if rorecomp else None
        # groups a filter dropped this step, as (reward std, group): padding if rounds run out
        self.set_aside: list[tuple[float, list[Sample]]] = []
        self.counters = {"added_groups": 0, "served_groups": 0, "dropped_stale_groups": 0,
                         "filtered_groups": 0, "padded_groups": 0,
                         # set aside by a filter and not needed to pad the batch they were for
                         "discarded_filtered_groups": 0}

    def add(self, samples: list[Sample], group_filter: GroupFilter | None = None,
            step: int = 0) -> Added:
        """Queue the samples' groups; those `group_filter` drops at `step` are set aside."""
        groups = groups_of(samples)
        self.counters["added_groups"] += len(groups)
        group_filter = group_filter or GroupFilter("none")
        added = Added(group_rewards=[group_filter.rewards_of(g) for g in groups],
                      outcomes=[(g[0].prompt_id, [s.reward for s in g if s.reward is not None])
                                for g in groups])
        kept = []
        for group, rewards, keep in zip(groups, added.group_rewards,
                                        group_filter.keep(groups, step)):
            if keep:
                kept.append(group)
                added.kept.append(group[0].group_id)
            else:
                self.set_aside.append((reward_std(rewards), group))
                added.dropped.append(group[0].group_id)
        self.strategy.add(kept)
        self.counters["filtered_groups"] += len(added.dropped)
        return added

    def next_batch(self, num_groups: int, current_version: int,
                   pad_with_set_aside: bool = True) -> list[Sample] | None:
        """`num_groups` whole groups, or None when too few fresh groups are waiting. With
        `pad_with_set_aside`, a shortfall is made up from the groups a filter dropped, widest
        reward spread first (they carry the most signal of those; uniform ones have none)."""
        self.take_stale(current_version)
        shortfall = num_groups - len(self.strategy)
        if shortfall > 0:
            if not pad_with_set_aside or shortfall > len(self.set_aside):
                return None
            widest = sorted(self.set_aside, key=lambda pair: -pair[0])   # stable: ties by arrival
            self.strategy.add([group for _, group in widest[:shortfall]])
            self.counters["padded_groups"] += shortfall
        groups = self.strategy.take(num_groups)
        self.counters["discarded_filtered_groups"] += len(self.set_aside) - max(shortfall, 0)
        self.set_aside = []
        self.counters["served_groups"] += len(groups)
        return [s for g in groups for s in g]

    def recompose(self, samples: list[Sample], current_version: int
                  ) -> tuple[list[Sample], list[list[Sample]]]:
        """The batches to train a served batch as, once its advantages are on the samples
        (Sample.advantages): (priority batch, compensation batches) under RoRecomp, else
        (the batch as it is, none)."""
        if self.recomposer is None:
            return samples, []
        return self.recomposer.recompose(samples, current_version)

    def take_stale(self, current_version: int) -> list[list[Sample]]:
        """Remove (and count) the waiting groups too old to be trained at `current_version`."""
        oldest = current_version - self.max_staleness
        stale = self.strategy.remove_if(lambda g: sampled_version(g) < oldest)
        self.counters["dropped_stale_groups"] += len(stale)
        return stale

    def stats(self, current_version: int | None = None) -> dict[str, float]:
        """Counters since the run began (groups added, served, dropped by reason), and what
        waits now: groups, responses, how many groups have a uniform reward (no signal under
        group-relative advantages), their age in learner versions behind `current_version`
        (when given), and each strategy's own."""
        waiting = self.strategy.groups()
        versions = [s.policy_version for g in waiting for s in g]
        out = {f"buffer/{k}": float(v) for k, v in self.counters.items()} | {
            "buffer/waiting_groups": float(len(waiting)),
            "buffer/waiting_samples": float(len(versions)),
            "buffer/waiting_uniform_groups": float(sum(
                reward_std([s.reward or 0.0 for s in g]) == 0 for g in waiting if len(g) > 1)),
            "buffer/set_aside_groups": float(len(self.set_aside))}
        if current_version is not None:
            ages = [current_version - v for v in versions]
            out["buffer/age_mean"] = sum(ages) / len(ages) if ages else 0.0
            out["buffer/age_max"] = float(max(ages, default=0))
        if self.recomposer:
            out.update(self.recomposer.stats())
        return out

    def state_dict(self) -> dict:
        return {"strategy": self.strategy.state_dict(), "counters": dict(self.counters),
                "set_aside": self.set_aside,
                "rorecomp": self.recomposer.state_dict() if self.recomposer else None}

    def load_state_dict(self, state: dict) -> None:
        self.strategy.load_state_dict(state["strategy"])
        if self.recomposer and state.get("rorecomp"):
            self.recomposer.load_state_dict(state["rorecomp"])
        self.counters.update(_renamed_counters(state["counters"]))
        # checkpoints before group filters held DAPO's uniform groups (spread 0) under "uniform"
        self.set_aside = state.get("set_aside") or [(0.0, g) for g in state.get("uniform", [])]


def _renamed_counters(counters: dict) -> dict:
    old = {"dropped_uniform_groups": "filtered_groups", "padded_uniform_groups": "padded_groups"}
    return {old.get(k, k): v for k, v in counters.items()}
