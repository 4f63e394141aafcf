"""The asynchronous scheduler (scheduler.mode=async): stages stream, and rollouts run up to
buffer.max_staleness learner versions ahead of the learner.

Each generate call (a "unit": one share of a round of prompts) goes

    rollout worker -> reward worker -> (repair worker, SCOPE) -> buffer

each stage sent the moment the one before it finishes (the data moves actor to actor; this
process only passes the reference on). The learner trains as soon as the buffer holds a
batch; the rollout and reward workers keep working meanwhile, and `StalenessManager`
(AReaL's rule) decides how many groups may start. Weights are published
as a version; each generate call carries the newest, so a worker never mixes two versions in
one call and a restarted worker catches up by itself.

When an actor's process dies (SIGKILL, OOM), Ray restarts it and the unit is sent again from
the stage that failed; a unit reaches the buffer once, so no group is trained twice and none
is lost. With max_staleness 0 it admits one round per version, which is the lock-step
scheduler's step: the same seeds, the same samples, the same numbers.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

from actors.buffer import Added
from core.records import Prompt, Sample, SamplingParams
from orchestrator.metrics import PhaseTimer
from orchestrator.scheduler import Scheduler, filter_step
from orchestrator.staleness import StalenessManager

log = logging.getLogger("rewardmill")

STAGES = ("rollout", "reward", "repair", "buffer")   # repair only with buffer.repair (SCOPE)


@dataclass
class Unit:
    """One generate call and what follows it, until its groups are in the buffer."""

    round: int                  # admission round: its seed and group tag, as sync's step
    share: int                  # index in the round: picks the workers, offsets the seed
    prompts: list[Prompt]
    sampling: SamplingParams
    version: int                # learner version when admitted
    stage: str = "rollout"      # the stage working on it now (STAGES)
    future: Any = None          # that stage's result
    generated: Any = None       # the rollout stage's result, which the reward stage reads
    scored: Any = None          # the reward stage's result, which the repair stage reads
    sends: int = 0              # times a stage was sent (again) after a worker died

    @property
    def tag(self) -> str:
        return f"{self.round}.1/"   # sync's tag of step `round`, first sampling round


class StreamingScheduler(Scheduler):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_staleness = self.cfg.buffer.max_staleness
        self.admission = StalenessManager(self.groups_per_step, self.max_staleness,
                                          self.cfg.scheduler.max_running_groups)
        self.rounds = 0             # rounds admitted so far
        self.in_flight: list[Unit] = []
        self.waiting = 0            # groups in the buffer
        self.set_aside = 0          # groups a filter set aside since the last batch
        self.reports: list[Added] = []   # what landed since the last batch
        self.failed_units: Counter = Counter()  # stage -> units whose worker died under them
        self.stale_dropped = 0      # groups dropped as too stale (on_stale: drop)

    # --- the batch for one step ----------------------------------------------------------

    def sample_batch(self, step: int, timer: PhaseTimer) -> tuple[list[Sample], int, list[Added]]:
        """Admit what the staleness bound allows, then take landings until a batch can be
        served at learner version `step`."""
        rounds = 0
        with timer("wait"):
            while True:
                rounds += self.admit(step)
                if self.can_serve(step):
                    samples = self.serve(step)
                    if samples is not None:
                        break
                if not self.in_flight:
                    raise RuntimeError(
                        f"step {step}: nothing in flight and no batch to serve ({self.waiting} "
                        f"groups waiting, admission {vars(self.admission)})")
                self.land()
        reports, self.reports = self.reports, []
        return samples, rounds, reports

    def can_serve(self, version: int) -> bool:
        if self.cfg.buffer.on_stale == "wait" and any(
                u.version + self.max_staleness <= version for u in self.in_flight):
            return False   # groups that must be trained now are still on their way
        return self.waiting >= self.groups_per_step or self.filter_exhausted()

    def filter_exhausted(self) -> bool:
        """A group filter has set aside max_sampling_rounds steps' worth of groups since the
        last batch: pad with the best of them (as sync does when its rounds run out)."""
        return (self.group_filter.active and self.set_aside
                >= self.cfg.algorithm.max_sampling_rounds * self.groups_per_step)

    def serve(self, version: int) -> list[Sample] | None:
        stale = self.cluster_get(self.pipe.buffer.call("take_stale", version))
        if stale:
            self.waiting -= len(stale)
            self.admission.withdrawn(len(stale))
            self.stale_dropped += len(stale)
            log.warning("step %d: dropped %d groups sampled more than %d versions ago "
                        "(buffer.on_stale=%s)", version, len(stale), self.max_staleness,
                        self.cfg.buffer.on_stale)
        pad = self.filter_exhausted()
        samples = self.pipe.next_batch(self.groups_per_step, version, pad_with_set_aside=pad)
        if samples is not None:
            self.waiting -= min(self.waiting, self.groups_per_step)
            self.set_aside = 0
        return samples

    # --- admission and landing -----------------------------------------------------------

    def admit(self, version: int) -> int:
        """Start rounds of up to data.prompts_per_step prompts while the bound allows; how many."""
        views, started = self.prompts.views_per_prompt, 0
        while (room := self.admission.capacity(version)) >= views:
            started += 1
            prompts = self.prompts.next(min(room, self.groups_per_step) // views)
            number, self.rounds = self.rounds, self.rounds + 1
            for k, share, sampling in self.pipe.shares(prompts, self.sampling(number, 1)):
                self.send(Unit(number, k, share, sampling, version))
            self.admission.admitted(len(prompts))
        return started

    def send(self, unit: Unit) -> None:
        """Send the unit to its stage's worker. A stage is sent only once the one before it
        is done: an actor runs its calls in order, and a call still waiting for its input
        would hold up every call behind it (next_batch behind an add, say)."""
        pipe, k = self.pipe, unit.share
        if unit.stage == "rollout":
            unit.future = pipe.generate_share(k, unit.prompts, unit.sampling, unit.tag)
        elif unit.stage == "reward":
            unit.future = pipe.score_share(k, unit.generated)
        elif unit.stage == "repair":
            unit.future = pipe.repair_share(unit.scored, unit.sampling)
        else:
            unit.future = pipe.buffer.call("add", unit.future, self.group_filter,
                                           filter_step(unit.version))
        if unit not in self.in_flight:
            self.in_flight.append(unit)

    def land(self) -> None:
        """Wait until some unit's stage is done; move each finished one on to its next stage,
        or account for its groups once they are in the buffer."""
        units = list(self.in_flight)
        for i in self.pipe.cluster.wait([u.future for u in units]):
            unit = units[i]
            try:   # (a finished stage's samples are fetched only to see that it did not fail)
                result = self.cluster_get(unit.future)
            except Exception as err:
                if not self.pipe.cluster.died(err):
                    raise
                self.resend(unit, err)
                continue
            if unit.stage == "rollout":
                unit.stage, unit.generated = "reward", unit.future
                self.send(unit)
            elif unit.stage == "reward":
                unit.stage, unit.scored = ("repair" if self.pipe.repairer else "buffer"), unit.future
                self.send(unit)
            elif unit.stage == "repair":
                unit.stage = "buffer"
                self.send(unit)
            else:
                self.in_flight.remove(unit)
                self.admission.landed(len(result.kept), len(result.dropped))
                self.waiting += len(result.kept)
                self.set_aside += len(result.dropped)
                self.reports.append(result)
                self.observe_prompts([result])

    def resend(self, unit: Unit, err: BaseException) -> None:
        """Send a unit's stage again after its worker died (Ray is restarting it)."""
        workers = self.workers(unit.stage)
        where = f"the {unit.stage} worker {unit.share % len(workers)}"
        self.before_resend(err, unit.share, unit.prompts, unit.sends, where)
        unit.sends += 1
        self.failed_units[unit.stage] += 1
        self.send(unit)

    def workers(self, stage: str) -> list:
        return {"rollout": self.pipe.rollouts, "reward": self.pipe.rewarders,
                "repair": [self.pipe.repairer]}.get(stage, [None])

    def cluster_get(self, future):
        return self.pipe.cluster.get(future)

    # --- what the lock-step scheduler does differently -------------------------------------

    def publish_weights(self, version: int) -> None:
        """No waiting: the next generate calls carry the new version."""
        self.pipe.publish_weights(version)

    def train_step(self, step: int) -> dict:
        metrics = super().train_step(step)
        metrics.update({
            "queue/running_groups": float(self.admission.running),
            "queue/buffer_groups": float(self.waiting),
            "queue/units_in_flight": float(len(self.in_flight)),
            "faults/stale_dropped_groups": float(self.stale_dropped),
            **{f"faults/failed_units/{stage}": float(n) for stage, n in self.failed_units.items()}})
        return metrics

    def save(self) -> None:
        """Let every unit in flight land first: the checkpoint then holds all the prompts
        taken from the stream (in the buffer or trained), and resume loses none."""
        while self.in_flight:
            self.land()
        super().save()

    def scheduler_state(self) -> dict:
        return {"streaming": {"rounds": self.rounds, "waiting": self.waiting,
                              "set_aside": self.set_aside,
                              "admission": self.admission.state_dict()}}

    def load_scheduler_state(self, components: dict) -> None:
        state = components.get("streaming")
        if state is None:
            # a checkpoint of a lock-step run: its buffer holds no groups for later steps
            self.rounds, self.admission.accepted = self.step, self.step * self.groups_per_step
            return
        self.rounds, self.waiting = state["rounds"], state["waiting"]
        self.set_aside = state["set_aside"]
        self.admission.load_state_dict(state["admission"])
