"""RoRecomp (Li et al., arXiv:2509.25958): choose which responses form each update.

Outcome rewards alone give no reason to be brief, and within a small group length is a noisy
signal. RoRecomp changes neither the reward nor the loss, only the batches:
  - a priority batch of each group's shortest correct and longest incorrect responses, whose
    gradient points toward brevity (short right answers up, long wrong ones down);
  - the other responses wait in a compensation buffer; once it holds `capacity` of them, the
    oldest `capacity` are trained as one more optimizer step (with probability p_comp), which
    keeps training stable.

Advantages are computed on the whole group before recomposition and travel with each sample
(Sample.advantages, Sample.loss_mask), with its behaviour log-probs, so a replayed response is
trained as the step that sampled it computed it. The paper gives no values for alpha,
capacity or p_comp, and reviewers found p_comp unclear; the defaults here are [inferred].
"""
from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass
from typing import Optional

from core.records import Sample, groups_of
from core.schema import checked


@dataclass
class RoRecompConfig:
    """buffer.rorecomp (conf/buffer/rorecomp.yaml); null = no recomposition."""

    alpha: float = checked(0.5, gt=0, le=1)   # share of each group's correct responses (shortest
                                              # first) and of its incorrect ones (longest first) in
                                              # the priority batch, rounded up [inferred: 0.5; sweep
                                              # 0.25 / 0.5]
    capacity: Optional[int] = checked(None, ge=1)  # responses the compensation buffer collects
                                              # before its oldest `capacity` are trained as one extra
                                              # step; null = (1 - alpha) x the rollout batch (one
                                              # extra step per rollout step), rounded down to a
                                              # multiple of learner.num_ranks [inferred]
    p_comp: float = checked(0.25, ge=0, le=1)  # probability that a full compensation batch is
                                              # trained; otherwise it is dropped (counted). [inferred]
                                              # 1 trains every response once after all, which undid
                                              # the brevity signal on toy addition (length -3% vs
                                              # GRPO; 0.25: -32%, README)
    correct_source: Optional[str] = None      # reward source that decides "correct"; null = the
                                              # combined reward
    correct_threshold: float = 0.5            # a response is correct when that reward >= this
    max_age: Optional[int] = checked(None, ge=0)  # learner versions a waiting response may lag
                                              # the learner before it is dropped (counted); null =
                                              # no limit


class RoRecomp:
    """The recomposition and its compensation buffer (held by the replay buffer's actor).
    `unit`: each batch's size is a multiple of it (learner ranks split every mini-batch
    evenly); the priority batch's surplus waits in the compensation buffer instead."""

    def __init__(self, alpha: float = 0.5, capacity: int = 8, p_comp: float = 0.25,
                 correct_source: str | None = None, correct_threshold: float = 0.5,
                 max_age: int | None = None, unit: int = 1, seed: int = 0):
        if capacity is None or capacity % unit:
            raise ValueError(f"buffer.rorecomp.capacity={capacity} must be set and a multiple "
                             f"of learner.num_ranks ({unit})")
        self.alpha, self.capacity, self.p_comp = alpha, capacity, p_comp
        self.correct_source, self.correct_threshold = correct_source, correct_threshold
        self.max_age, self.unit = max_age, unit
        self.rng = random.Random(f"{seed}/rorecomp")   # its own stream: p_comp's draws
        self.waiting: deque[Sample] = deque()
        self.counters = {"priority_samples": 0, "compensation_steps": 0,
                         "compensation_samples": 0, "dropped_p_comp": 0, "dropped_too_old": 0}
        self.last_lengths: dict[str, float] = {}

    def correct(self, sample: Sample) -> bool:
        value = sample.reward if self.correct_source is None else sample.rewards.get(self.correct_source)
        return value is not None and value >= self.correct_threshold

    def split_group(self, group: list[Sample]) -> tuple[list[Sample], list[Sample]]:
        """(priority, rest) of one group: the first ceil(alpha |C|) of its correct responses
        by length ascending, and of its incorrect ones by length descending (ties: arrival)."""
        right = sorted((s for s in group if self.correct(s)), key=lambda s: len(s.response_ids))
        wrong = sorted((s for s in group if not self.correct(s)), key=lambda s: -len(s.response_ids))
        take_right, take_wrong = self._share(len(right)), self._share(len(wrong))
        return (right[:take_right] + wrong[:take_wrong],
                right[take_right:] + wrong[take_wrong:])

    def _share(self, n: int) -> int:
        return math.ceil(self.alpha * n - 1e-9)   # 0.3 x 10 is 3.0000000000000004 in floats

    def recompose(self, samples: list[Sample], version: int
                  ) -> tuple[list[Sample], list[list[Sample]]]:
        """This step's priority batch, and the compensation batches that are due (each of
        `capacity` responses, oldest first). `version`: the learner's version now."""
        priority, rest = [], []
        for group in groups_of(samples):
            first, others = self.split_group(group)
            priority += first
            rest += others
        surplus = len(priority) % self.unit
        if surplus:
            priority, rest = priority[:-surplus], priority[-surplus:] + rest
        self._note_lengths(priority)
        self.counters["priority_samples"] += len(priority)
        self.waiting.extend(rest)
        self._drop_old(version)
        compensation = []
        while len(self.waiting) >= self.capacity:
            batch = [self.waiting.popleft() for _ in range(self.capacity)]
            if self.rng.random() < self.p_comp:
                compensation.append(batch)
                self.counters["compensation_steps"] += 1
                self.counters["compensation_samples"] += len(batch)
            else:
                self.counters["dropped_p_comp"] += len(batch)
        return priority, compensation

    def _drop_old(self, version: int) -> None:
        if self.max_age is None:
            return
        kept = deque(s for s in self.waiting if version - s.policy_version <= self.max_age)
        self.counters["dropped_too_old"] += len(self.waiting) - len(kept)
        self.waiting = kept

    def _note_lengths(self, priority: list[Sample]) -> None:
        """Mean response length of the priority batch's correct and incorrect responses (left
        out when it has none of them)."""
        self.last_lengths = {}
        for name, rows in (("priority_correct_len", [s for s in priority if self.correct(s)]),
                           ("priority_incorrect_len", [s for s in priority if not self.correct(s)])):
            if rows:
                self.last_lengths[name] = sum(len(s.response_ids) for s in rows) / len(rows)

    def stats(self) -> dict[str, float]:
        return {f"rorecomp/{k}": float(v) for k, v in
                {**self.counters, **self.last_lengths, "waiting_samples": len(self.waiting)}.items()}

    def state_dict(self) -> dict:
        return {"waiting": list(self.waiting), "rng": self.rng.getstate(),
                "counters": dict(self.counters)}

    def load_state_dict(self, state: dict) -> None:
        self.waiting = deque(state["waiting"])
        self.rng.setstate(state["rng"])
        self.counters.update(state["counters"])
