"""Where metrics go: a JSONL file, TensorBoard and wandb (offline unless a key is set).

A logging back-end that fails to start is reported once and skipped; it never stops a run.
"""
from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("rewardmill")


class PhaseTimer:
    """Wall seconds spent in each named phase of one step."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start


class HostCpu:
    """CPU use of the driver's machine between two readings, from /proc/stat (Linux; empty
    elsewhere): `host/cpu_busy_cores`, the cores' worth of work done by every process on it
    (2.0 = both cores of a 2-core box busy all the time), and `host/cpu_steal_cores`, the
    cores' worth of time a hypervisor ran other guests instead. A step that did not use the
    cores had idle stages to overlap; steal makes two runs' timings incomparable."""

    def __init__(self):
        self.before = self._read()

    @staticmethod
    def _read() -> tuple[float, float, float] | None:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        except (OSError, ValueError):
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        ticks = os.sysconf("SC_CLK_TCK")
        return (time.perf_counter(), (user + nice + system + irq + softirq) / ticks, steal / ticks)

    def since_last(self) -> dict[str, float]:
        now, before = self._read(), self.before
        self.before = now
        if now is None or before is None or now[0] <= before[0]:
            return {}
        wall = now[0] - before[0]
        return {"host/cpu_busy_cores": (now[1] - before[1]) / wall,
                "host/cpu_steal_cores": (now[2] - before[2]) / wall}


class MetricsSink:
    def __init__(self, run_dir: Path, settings, run_name: str, config: dict):
        self.jsonl = open(run_dir / "metrics.jsonl", "a") if settings.jsonl else None
        self.samples_per_step = settings.samples
        self.samples = open(run_dir / "samples.jsonl", "a") if settings.samples else None
        self.trained = open(run_dir / "trained.jsonl", "a") if settings.trained_groups else None
        self.tb = self.wandb = None
        if settings.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(run_dir / "tensorboard"))
            except Exception as err:  # optional back-end
                log.warning("TensorBoard logging is off: %s", err)
        mode = settings.wandb_mode
        if mode == "auto":
            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        if mode != "disabled":
            try:
                import wandb
                self.wandb = wandb.init(project=settings.wandb_project, name=run_name,
                                        dir=str(run_dir), mode=mode, config=config,
                                        reinit="finish_previous",
                                        settings=wandb.Settings(silent=True, console="off"))
            except Exception as err:  # optional back-end
                log.warning("wandb logging is off: %s", err)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self.jsonl:
            self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
            self.jsonl.flush()
        if self.tb:
            for k, v in metrics.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb:
            self.wandb.log(metrics, step=step)

    def log_samples(self, step: int, kind: str, samples) -> None:
        """The first `logging.samples` samples as the model saw and wrote them (prompt text
        after its chat template, response, rewards, flags): what to read when a curve looks odd."""
        if not self.samples:
            return
        for s in samples[:self.samples_per_step]:
            self.samples.write(json.dumps({
                "step": step, "kind": kind, "prompt_id": s.prompt_id, "prompt": s.prompt_text,
                "response": s.response_text, "reward": s.reward, "rewards": s.rewards,
                "flags": s.flags, "truncated": s.truncated}) + "\n")
        self.samples.flush()

    def log_trained(self, step: int, learner_version: int, samples) -> None:
        """The groups step `step` trained on, each with the oldest weights version among its
        samples, trained at `learner_version`: an audit trail of every group the run learned from."""
        if not self.trained:
            return
        groups: dict[str, int] = {}
        for s in samples:
            groups[s.group_id] = min(groups.get(s.group_id, s.policy_version), s.policy_version)
        self.trained.write(json.dumps({"step": step, "learner_version": learner_version,
                                       "groups": groups}) + "\n")
        self.trained.flush()

    def close(self) -> None:
        if self.trained:
            self.trained.close()
        if self.jsonl:
            self.jsonl.close()
        if self.samples:
            self.samples.close()
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()


def read_history(path: Path) -> dict[int, dict]:
    """step -> metrics, the last line winning (a resumed run may repeat steps)."""
    history: dict[int, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                history.setdefault(row["step"], {}).update(row)
    return dict(sorted(history.items()))
