"""Admission control for asynchronous rollouts: how many more groups may start now.

AReaL's rule (arXiv:2505.24298), counted in groups:

    capacity = min(max_running - running,
                   (max_staleness + version + 1) * batch - (accepted + running))

`version` is the learner's (steps trained), `batch` the groups one step trains on,
`accepted` every group that landed in the buffer so far (trained or waiting), `running`
those generating or being scored. A group admitted at version v is generated with weights
v; as long as groups are trained oldest first, it is trained by version v + max_staleness.
With max_staleness 0 exactly one step's groups are admitted per version: the synchronous
loop.
"""
from __future__ import annotations


class StalenessManager:
    def __init__(self, batch_groups: int, max_staleness: int, max_running: int | None = None):
        self.batch, self.max_staleness, self.max_running = batch_groups, max_staleness, max_running
        self.accepted = 0   # groups that reached the buffer (kept by any group filter)
        self.running = 0    # groups admitted and not landed yet

    def capacity(self, version: int) -> int:
        room = (self.max_staleness + version + 1) * self.batch - (self.accepted + self.running)
        if self.max_running is not None:
            room = min(room, self.max_running - self.running)
        return max(room, 0)

    def admitted(self, groups: int) -> None:
        self.running += groups

    def landed(self, kept: int, dropped: int) -> None:
        """`kept` groups reached the buffer; a group filter set `dropped` aside (they free
        their place: more prompts are admitted instead)."""
        self.running -= kept + dropped
        self.accepted += kept

    def withdrawn(self, groups: int) -> None:
        """Accepted groups that will not be trained (dropped as stale): their places free up."""
        self.accepted -= groups

    def state_dict(self) -> dict:
        return {"accepted": self.accepted}

    def load_state_dict(self, state: dict) -> None:
        self.accepted, self.running = state["accepted"], 0
