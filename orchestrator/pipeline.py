"""The running components (rollout, reward, buffer and learner workers) and the
phase-level operations the scheduler calls on them. Data moves between workers as futures,
so under Ray it goes from actor to actor without a detour through the driver.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from omegaconf import OmegaConf

from actors.buffer import ReplayBuffer
from actors.repair import RepairWorker
from actors.restart_state import save_worker_state
from actors.reward import RewardWorker
from actors.rollout import RolloutWorker
from core.records import Prompt, Sample, SamplingParams, Weights
from orchestrator.cluster import Cluster
from orchestrator.labelers import Labelers
from orchestrator.learner_group import LearnerGroup


def split_evenly(items: list, parts: int) -> list[list]:
    """Contiguous, near-equal chunks (the first ones one longer when it does not divide)."""
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for k in range(parts):
        end = start + size + (k < extra)
        out.append(items[start:end])
        start = end
    return out


def rorecomp_options(cfg) -> dict | None:
    """RoRecomp's options with the run's learner ranks and seed, and the default capacity:
    (1 - alpha) x the rollout batch, about one compensation step per rollout step."""
    if cfg.buffer.rorecomp is None:
        return None
    options = OmegaConf.to_container(cfg.buffer.rorecomp)
    ranks = cfg.learner.num_ranks
    if options["capacity"] is None:
        rollout_batch = cfg.data.prompts_per_step * cfg.rollout.responses_per_prompt
        leftover = int((1 - options["alpha"]) * rollout_batch)
        options["capacity"] = max(leftover // ranks, 1) * ranks
    return {**options, "unit": ranks, "seed": cfg.seed}


class Pipeline:
    def __init__(self, cfg, cluster: Cluster, policy_path: str, learner: LearnerGroup,
                 add_special_tokens: bool = True):
        self.cluster, self.learner = cluster, learner
        r = cfg.rollout
        sources = OmegaConf.to_container(cfg.reward.sources, resolve=True)
        # where each worker's stateful reward sources are saved for a restart (actors/restart_state.py)
        state_dir = Path(cfg.run_dir) / "worker_state"
        self.state_files = {
            "rollouts": [str(state_dir / f"rollout-{k}.pt") for k in range(r.num_workers)],
            "rewarders": [str(state_dir / f"reward-{k}.pt") for k in range(cfg.reward.num_workers)]}
        self.rollouts = [
            cluster.spawn(RolloutWorker, r.engine, policy_path, reward_sources=sources,
                          state_file=state_file,
                          num_cpus=r.num_cpus, restarts=cfg.cluster.actor_restarts,
                          num_gpus=r.num_gpus, max_batch_prompts=r.max_batch_prompts,
                          threads=r.threads, dtype=cfg.model.dtype,
                          step_delimiter=r.step_delimiter,
                          add_special_tokens=add_special_tokens)
            for state_file in self.state_files["rollouts"]]
        self.labelers = Labelers(cfg, cluster)   # before the reward workers that look them up
        self.rewarders = [cluster.spawn(RewardWorker, sources, cfg.reward.threads_per_source,
                                        cfg.reward.combine, state_file=state_file,
                                        restarts=cfg.cluster.actor_restarts)
                          for state_file in self.state_files["rewarders"]]
        self.chunks_per_worker = r.chunks_per_worker
        self.partial = r.partial
        self.weights: Weights | None = None   # the newest published weights (None: the initial ones)
        b = cfg.buffer
        self.repairer = None   # SCOPE: repairs failed responses between reward and buffer
        if b.repair is not None:
            engine = dict(model_path=policy_path, max_batch_prompts=r.max_batch_prompts,
                          threads=r.threads, dtype=cfg.model.dtype,
                          step_delimiter=r.step_delimiter, add_special_tokens=add_special_tokens)
            self.repairer = cluster.spawn(RepairWorker, sources, OmegaConf.to_container(b.repair),
                                          engine, num_cpus=r.num_cpus, num_gpus=r.num_gpus,
                                          restarts=cfg.cluster.actor_restarts)
        self.buffer = cluster.spawn(ReplayBuffer, b.strategy, b.max_staleness,
                                    rorecomp=rorecomp_options(cfg),
                                    **OmegaConf.to_container(b.strategy_options))

    def shares(self, prompts: list[Prompt], sampling: SamplingParams
               ) -> list[tuple[int, list[Prompt], SamplingParams]]:
        """A round of prompts cut into generate calls: rollout.chunks_per_worker per worker,
        share k on worker k mod workers with seed + k. Returns (k, prompts, sampling) for
        each non-empty share."""
        parts = split_evenly(prompts, len(self.rollouts) * self.chunks_per_worker)
        return [(k, share, replace(sampling, seed=sampling.seed + k))
                for k, share in enumerate(parts) if share]

    def generate_share(self, k: int, prompts: list[Prompt], sampling: SamplingParams,
                       tag: str):
        """One generate call on worker k mod workers, with the newest published weights."""
        worker = self.rollouts[k % len(self.rollouts)]
        return worker.call("generate", prompts, sampling, tag, self.weights)

    def score_share(self, k: int, sample_future, learn: bool = True):
        """Score share k's samples on reward worker k mod workers (whole groups stay
        together); learn=False for held-out samples, which co-trained reward models must not
        learn from."""
        return self.rewarders[k % len(self.rewarders)].call("score", sample_future, learn)

    def repair_share(self, scored_future, sampling: SamplingParams):
        """SCOPE: the share's scored samples with failed responses repaired (the guide, when it
        is the policy, runs with the newest published weights); as they are without repairs."""
        if self.repairer is None:
            return scored_future
        return self.repairer.call("repair", scored_future, sampling, self.weights)

    def process_share(self, k: int, prompts: list[Prompt], sampling: SamplingParams, tag: str):
        """Share k through every stage before the buffer: generate, score, repair."""
        return self.repair_share(self.score_share(k, self.generate_share(k, prompts, sampling, tag)),
                                 sampling)

    def generate(self, prompts: list[Prompt], sampling: SamplingParams, tag: str) -> list:
        """Start generation on every rollout worker; one future per non-empty share."""
        return [self.generate_share(k, share, s, tag)
                for k, share, s in self.shares(prompts, sampling)]

    def annotate(self, sample_futures: list, learn: bool = True) -> list:
        return [self.score_share(k, f, learn) for k, f in enumerate(sample_futures)]

    def next_batch(self, num_groups: int, version: int,
                   pad_with_set_aside: bool = True) -> list[Sample] | None:
        return self.cluster.get(self.buffer.call("next_batch", num_groups, version,
                                                 pad_with_set_aside))

    def publish_weights(self, version: int) -> None:
        """Make the learner's current weights the ones later generate calls run with; a
        worker loads them when such a call reaches it (nothing waits here)."""
        state = self.learner.state_future()
        self.weights = Weights(version, state.value if not self.cluster.remote else state)
        if self.partial:   # generations running now switch to them at their next token
            for worker in self.rollouts:
                worker.call("offer_weights", self.weights, control=True)

    def sync_weights(self, version: int) -> None:
        """Publish the learner's current weights and load them on every rollout worker now (a
        worker whose process died loads them with its next generate call, which carries them)."""
        self.publish_weights(version)
        state = self.weights.state
        for load in [w.call("load_weights", state, version) for w in self.rollouts]:
            try:
                self.cluster.get(load)
            except Exception as err:
                if not self.cluster.died(err):
                    raise

    def repair_metrics(self) -> dict[str, float]:
        """The repair stage's counters (repair/*), or none without one."""
        return self.cluster.get(self.repairer.call("stats")) if self.repairer else {}

    def vitals(self) -> dict[str, list[dict]]:
        """Each rollout and reward worker's `vitals()` (busy seconds, PID), by stage; a stage
        with a worker restarting after a crash is left out of this reading."""
        out = {}
        stages = [("rollout", self.rollouts), ("reward", self.rewarders)]
        for stage, workers in stages + ([("repair", [self.repairer])] if self.repairer else []):
            try:
                out[stage] = self.cluster.get([w.call("vitals", control=True) for w in workers])
            except Exception as err:
                if not self.cluster.died(err):
                    raise
        return out

    def components_state(self, step: int) -> dict:
        """State of stateful reward sources on every reward and rollout worker (checkpoint
        `step`'s); each worker's is also saved where it reloads it after a restart."""
        out = {"labelers": self.labelers.state_dict()}
        if self.repairer:
            out["repair"] = self.cluster.get(self.repairer.call("state_dict"))
        for key, workers in (("rewarders", self.rewarders), ("rollouts", self.rollouts)):
            out[key] = self.cluster.get([w.call("state_dict") for w in workers])
            for path, state in zip(self.state_files[key], out[key]):
                if state:
                    save_worker_state(path, step, state)
        return out

    def load_components_state(self, state: dict, step: int) -> None:
        self.labelers.load_state_dict(state.get("labelers", {}))
        if self.repairer and "repair" in state:
            self.cluster.get(self.repairer.call("load_state_dict", state["repair"]))
        for key, workers in (("rewarders", self.rewarders), ("rollouts", self.rollouts)):
            parts = state.get(key, [])
            self.cluster.get([w.call("load_state_dict", part)
                              for w, part in zip(workers, parts)])
            for path, part in zip(self.state_files[key], parts):
                if part:
                    save_worker_state(path, step, part)

    def wait(self, futures: list) -> None:
        """Block until the futures are done, without fetching their data to the driver."""
        if self.cluster.remote:
            import ray
            ray.wait(futures, num_returns=len(futures), fetch_local=False)

    def shutdown(self) -> None:
        """Stop the rollout, reward and buffer workers (the learner group is its owner's)."""
        for handle in [*self.rollouts, *self.rewarders, self.buffer] + (
                [self.repairer] if self.repairer else []):
            self.cluster.kill(handle)
        self.labelers.close()
