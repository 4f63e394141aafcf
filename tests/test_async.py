"""The asynchronous scheduler: admission by the staleness rule, parity with the lock-step
scheduler at max_staleness 0, the staleness bound on every sample, and a run that survives
its rollout and reward actors being killed with SIGKILL."""
import json
import os
import signal
import threading
from collections import Counter
from pathlib import Path

import torch
from safetensors.torch import load_file

from orchestrator.main import learner_settings, run
from orchestrator.staleness import StalenessManager
from tests.conftest import compose

# a reward with spread inside every group, so every step changes the weights
SIGNAL = ("reward.sources=[{name:correct,fn:toy_exact,weight:0.0},"
          "{name:length,fn:tests.reward_fns.length_bonus}]")


def _rows(run_dir: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (run_dir / name).read_text().splitlines()]


def test_capacity_rule():
    m = StalenessManager(batch_groups=4, max_staleness=1)
    assert m.capacity(version=0) == 8            # two steps' groups may start before any training
    m.admitted(8)
    assert m.capacity(0) == 0
    m.landed(kept=3, dropped=1)                  # a filter set one aside: its place frees up
    assert m.capacity(0) == 1
    m.admitted(1)
    m.landed(kept=5, dropped=0)
    assert m.capacity(0) == 0 and m.capacity(1) == 4   # one step trained: one more step's worth
    m = StalenessManager(batch_groups=4, max_staleness=3, max_running=2)
    assert m.capacity(0) == 2                    # max_running caps what runs at once
    m.admitted(2)
    m.landed(2, 0)
    m.withdrawn(2)                               # accepted groups dropped as stale free places
    assert m.capacity(0) == 2 and m.accepted == 0


def test_async_with_stale_samples_weights_tokens_by_the_sampler_unless_told_otherwise(tmp_path):
    """Stale samples get the decoupled objective's importance weight min(pi_old/pi_sampler, 2)
    by default; lock-step, max_staleness 0 and an explicit choice are left as they are."""
    cases = {("scheduler.mode=async", "buffer.max_staleness=1"): 2.0,
             ("scheduler.mode=async", "buffer.max_staleness=0"): None,
             ("scheduler.mode=sync", "buffer.max_staleness=1"): None,
             ("scheduler.mode=async", "buffer.max_staleness=1", "algorithm.tis_cap=0"): 0,
             ("scheduler.mode=async", "buffer.max_staleness=1", "algorithm.tis_cap=5"): 5}
    for overrides, cap in cases.items():
        assert learner_settings(compose(tmp_path, *overrides))["tis_cap"] == cap, overrides


def _weights(run_dir: Path, step: int) -> dict:
    return load_file(run_dir / "checkpoints" / f"step_{step:06d}" / "policy" / "model.safetensors")


def test_async_with_max_staleness_zero_gives_the_sync_numbers(tmp_path):
    runs = {}
    for mode in ("sync", "async"):
        cfg = compose(tmp_path / mode, "cluster=inline", SIGNAL, "steps=3", "checkpoint.every=3",
                      f"scheduler.mode={mode}", "buffer.max_staleness=0", "data.prompts_per_step=6",
                      "rollout.chunks_per_worker=2")
        run(cfg)
        runs[mode] = Path(cfg.run_dir)
    metrics = {mode: [{k: v for k, v in r.items()
                       if not k.startswith(("time/", "busy/", "queue/", "faults/", "host/"))}
                      for r in _rows(d, "metrics.jsonl")] for mode, d in runs.items()}
    assert metrics["sync"] == metrics["async"]
    assert any(r.get("train/grad_norm", 0) > 0 for r in metrics["sync"])   # it did learn
    assert _rows(runs["sync"], "trained.jsonl") == _rows(runs["async"], "trained.jsonl")
    sync, streamed = _weights(runs["sync"], 3), _weights(runs["async"], 3)
    assert all(torch.equal(sync[k], streamed[k]) for k in sync)


def _actor_pids(kind: str) -> list[int]:
    """PIDs of the live Ray actor processes of a class (Ray titles them ray::<Class>...)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode()
            except OSError:
                continue
            if title.startswith(f"ray::{kind}"):
                pids.append(int(entry.name))
    return pids


class Killer(threading.Thread):
    """Kills rollout and reward workers in turn, each time a live new process exists."""

    def __init__(self, kills: int, started: Path):
        super().__init__(daemon=True)
        self.kills, self.started, self.killed = kills, started, []
        self.stop = threading.Event()

    def run(self):
        while not self.started.exists() or not self.started.read_text().strip():
            if self.stop.wait(0.2):
                return
        kinds = ["RolloutWorker", "RewardWorker"]
        while len(self.killed) < self.kills and not self.stop.is_set():
            fresh = [p for p in _actor_pids(kinds[len(self.killed) % 2]) if p not in self.killed]
            if fresh:
                self.stop.wait(0.3)   # let it take work
                try:
                    os.kill(fresh[0], signal.SIGKILL)
                    self.killed.append(fresh[0])
                except ProcessLookupError:
                    pass
            self.stop.wait(0.1)


def _trained_under_kills(tmp_path, kills: int, steps: int, *overrides) -> tuple:
    """Run 4 prompts a step on 2 rollout shares and 2 reward workers while `kills` SIGKILLs
    hit them; (trained.jsonl's rows, every trained group id, the last metrics), after checking
    that the run finished all its steps, trained no group twice and sent work again."""
    cfg = compose(tmp_path, "cluster=local", SIGNAL, f"steps={steps}", "checkpoint.every=0",
                  "eval.every=0", "rollout.chunks_per_worker=2", "reward.num_workers=2",
                  "data.prompts_per_step=4", *overrides)
    run_dir = Path(cfg.run_dir)
    killer = Killer(kills=kills, started=run_dir / "metrics.jsonl")
    killer.start()
    try:
        summary = run(cfg)
    finally:
        killer.stop.set()
    assert len(killer.killed) == kills, "the run ended before every kill"
    assert summary["steps"] == steps
    trained = _rows(run_dir, "trained.jsonl")
    assert [r["step"] for r in trained] == list(range(1, steps + 1))
    seen = [g for r in trained for g in r["groups"]]
    assert len(seen) == len(set(seen)) == steps * 4          # nothing trained twice
    last = _rows(run_dir, "metrics.jsonl")[-1]
    assert last["faults/resent_units"] >= 1                   # some kill hit work in flight
    assert last["faults/actor_restarts"] >= 2                 # seen as workers with new PIDs
    return trained, seen, last


def test_async_run_survives_sigkills_with_every_group_trained_once_within_the_bound(tmp_path):
    steps, bound = 16, 2
    trained, seen, last = _trained_under_kills(tmp_path, 5, steps, "scheduler.mode=async",
                                               f"buffer.max_staleness={bound}")
    # Rounds are admitted one step's worth at a time, at most `bound` versions ahead, and
    # each must be trained within the bound: so the run trained rounds 0..steps-1, all of them
    rounds = Counter(g.split("/")[0] for g in seen)
    assert rounds == {f"{k}.1": 4 for k in range(steps)}
    for r in trained:
        lags = [r["learner_version"] - v for v in r["groups"].values()]
        assert all(0 <= lag <= bound for lag in lags)        # every sample within the bound
    assert max(r["learner_version"] - v for r in trained for v in r["groups"].values()) >= 1
    assert last["busy/rollout"] > 0 and 0 < last["busy/learner"] < 1


def test_lock_step_run_survives_sigkills_with_every_group_trained_once(tmp_path):
    """scheduler.mode=sync: a share whose rollout or reward worker is killed runs again (the
    same seed and weights), and every group is trained exactly once, in its own step."""
    steps = 8
    trained, seen, _ = _trained_under_kills(tmp_path, 3, steps, "scheduler.mode=sync")
    assert Counter(g.split("/")[0] for g in seen) == {f"{k}.1": 4 for k in range(steps)}
    assert all(v == r["learner_version"] for r in trained for v in r["groups"].values())


def test_partial_rollouts_switch_to_weights_published_mid_generation(tmp_path):
    """rollout.partial: the learner publishes while the next round is being generated; the
    responses then in flight go on under the new weights, and the run stays within the bound."""
    steps, bound = 6, 1
    cfg = compose(tmp_path, "cluster=local", SIGNAL, f"steps={steps}", "checkpoint.every=0",
                  "eval.every=0", "scheduler.mode=async", f"buffer.max_staleness={bound}",
                  "rollout.partial=true", "rollout.max_new_tokens=64", "data.prompts_per_step=8")
    summary = run(cfg)
    assert summary["steps"] == steps
    rows = [r for r in _rows(Path(cfg.run_dir), "metrics.jsonl") if "rollout/partial_fraction" in r]
    assert len(rows) == steps
    assert max(r["rollout/partial_fraction"] for r in rows) > 0    # some responses switched
    assert all(r["rollout/staleness_max"] <= bound for r in rows)


def test_a_restarted_reward_worker_resumes_its_sources_from_the_last_checkpoint(tmp_path):
    """A stateful source's state survives a SIGKILL: Ray's new process loads the state the
    pipeline saved at the last checkpoint, not the source's initial state."""
    from actors.restart_state import save_worker_state
    from actors.reward import RewardWorker
    from core.records import Sample
    from orchestrator.cluster import Cluster

    def scored(n):
        samples = [Sample(prompt_id="p", group_id="g", prompt_ids=[1], response_ids=[2],
                          behaviour_logprobs=[0.0], policy_version=0) for _ in range(n)]
        return [s.rewards["seen"] for s in cluster.get(worker.call("score", samples))]

    state_file = tmp_path / "worker_state" / "reward-0.pt"
    cluster = Cluster("local", num_cpus=2)
    try:
        worker = cluster.spawn(RewardWorker, [{"name": "seen", "fn": "tests.reward_fns.SeenBefore"}],
                               state_file=str(state_file), restarts=1)
        assert scored(3) == [0.0, 1.0, 2.0]
        save_worker_state(state_file, 7, cluster.get(worker.call("state_dict")))   # checkpoint
        assert scored(2) == [3.0, 4.0]
        os.kill(cluster.get(worker.call("vitals", control=True))["pid"], signal.SIGKILL)
        cluster.wait_alive(worker)
        assert scored(1) == [3.0]   # the checkpoint's count, not 0 (fresh) nor 5 (lost work)
    finally:
        cluster.shutdown()
