"""The central loop: prompts -> rollout -> reward -> buffer -> learn -> sync -> log -> checkpoint.

Synchronous on-policy RL: step s samples with the weights of learner version s. Every phase
is timed; what is left of the step's wall time is the scheduler's own overhead.
"""
from __future__ import annotations

import itertools
import logging
import time
import zlib
from collections import Counter

from omegaconf import OmegaConf
from tqdm import tqdm

from actors.buffer import Added, GroupFilter
from actors.reward import RewardSource, reward_metrics
from core.records import Batch, Prompt, Sample, SamplingParams, groups_of, response_diversity
from core.registry import lookup
from learners.advantages import needs_values
from learners.prepare import BatchRecipe, build_train_batch, keep_advantages, recomposed_batch
from orchestrator.checkpoint import Checkpoints
from orchestrator.metrics import HostCpu, MetricsSink, PhaseTimer
from orchestrator.pipeline import Pipeline
from orchestrator.prompt_selection import PromptSelectionConfig, difficulty_loss_weights
from rewards.self_rewards import LagrangeMultipliers, reward_std

log = logging.getLogger("rewardmill")

MAX_SENDS = 5   # a share whose worker dies this often is a share that kills its worker: stop


class Scheduler:
    def __init__(self, cfg, pipeline: Pipeline, prompts, eval_prompts, pad_id: int,
                 sink: MetricsSink, checkpoints: Checkpoints, tokenizer_path: str):
        self.cfg, self.pipe, self.prompts, self.eval_prompts = cfg, pipeline, prompts, eval_prompts
        self.pad_id, self.sink, self.checkpoints = pad_id, sink, checkpoints
        self.tokenizer_path = tokenizer_path
        self.source_names = [s.name for s in cfg.reward.sources]
        self.recipe = batch_recipe(cfg)
        self.annotation_needs = self.annotation_needs_of(self.recipe)
        # a dataset with several views per prompt (Co-Reward's twins) gives a group to each
        self.groups_per_step = cfg.data.prompts_per_step * prompts.views_per_prompt
        self.lagrange = None   # constrained RLHF: multipliers learned from batch means
        if self.recipe.estimator == "constrained":
            opts = self.recipe.estimator_options
            self.lagrange = LagrangeMultipliers(opts["constraints"], seed=cfg.seed,
                                                **opts.get("multiplier") or {})
        self.group_filter = group_filter_of(cfg.algorithm)   # DAPO / RLPR: which groups to train on
        self.selection = PromptSelectionConfig(**OmegaConf.to_container(cfg.buffer.prompts))
        self.step = 0
        self.trainable_checked = False      # the first step of this process checks its batch
        self.judge = None                   # a served judge that follows the policy (main sets it)
        self.evals: dict[int, float] = {}   # step -> held-out accuracy
        self.vitals_before: dict[tuple, dict] = {}   # (stage, worker) -> its last vitals()
        self.restarts = 0                            # rollout and reward worker restarts seen
        self.resent = 0                              # shares sent again after a worker died
        self.host_cpu = HostCpu()                    # this machine's CPU use, step to step
        self.stale_seen = 0.0                        # the buffer's stale drops already warned of

    # --- the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        cfg = self.cfg
        if self.step == 0 and 0 not in self.evals:
            self.log_eval(0)
        bar = tqdm(range(self.step, cfg.steps), initial=self.step, total=cfg.steps,
                   desc="RL", disable=not cfg.logging.progress_bar, dynamic_ncols=True)
        self.worker_metrics(1.0, 0.0)   # the workers' readings before the first step
        for step in bar:
            metrics = self.train_step(step)
            self.step = step + 1
            last = self.step == cfg.steps
            if cfg.eval.every and (self.step % cfg.eval.every == 0 or last):
                metrics.update(self.log_eval(self.step, log_now=False))
            if (cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0) or last:
                saving = time.perf_counter()
                self.save()
                metrics["time/checkpoint"] = time.perf_counter() - saving
            self.sink.log(self.step, metrics)
            bar.set_postfix(reward=f"{metrics['reward/combined']:.3f}",
                            acc=f"{self.latest_accuracy():.3f}",
                            step_s=f"{metrics['time/step']:.2f}")

    def train_step(self, step: int) -> dict:
        algo, timer, start = self.cfg.algorithm, PhaseTimer(), time.perf_counter()
        samples, rounds, added = self.sample_batch(step, timer)
        if self.selection.kind == "curriculum" and self.selection.curriculum_loss_weights:
            self.weight_by_difficulty(samples)
        if algo.greedy_baseline:
            with timer("baseline"):
                self.add_greedy_baseline(samples)
        annotations = {}
        if self.annotation_needs:
            with timer("annotate"):
                plain = self.pipe.cluster.put(Batch.from_samples(samples, self.pad_id))
                annotations = self.pipe.learner.run("annotate", plain, self.annotation_needs)[0]
        if self.lagrange:
            self.recipe.estimator_options["multipliers"] = self.lagrange.values()
        with timer("prepare"):
            batch, prepared = build_train_batch(samples, self.recipe, self.pad_id, annotations)
            if not self.trainable_checked:
                require_trainable(samples, batch)
                self.trainable_checked = True
            recomposed = {}
            if self.cfg.buffer.rorecomp is not None:
                batch, recomposed = self.recompose(samples, batch, version=step)
            batch_future = self.pipe.cluster.put(batch)
        with timer("train"):
            train = self.pipe.learner.train_step(batch_future)
        with timer("sync"):
            self.publish_weights(version=step + 1)
            judge = self.judge.after_weight_update(step + 1, lambda folder: self.pipe.learner.run(
                "save_policy", folder, self.tokenizer_path)) if self.judge else {}
        total = time.perf_counter() - start
        self.sink.log_samples(step + 1, "train", samples)
        self.sink.log_trained(step + 1, step, samples)
        metrics = {**reward_metrics(samples, self.source_names), **judge,
                   **rollout_metrics(samples, learner_version=step), **self.buffer_metrics(step + 1),
                   **{f"advantage/{k}": v for k, v in prepared.items()},
                   **{f"recompose/{k}": v for k, v in recomposed.items()},
                   **{f"train/{k}": v for k, v in train.items()}}
        if self.selection.kind != "stream":
            metrics.update(self.prompts.metrics())
        if self.group_filter.active:
            metrics["rollout/sampling_rounds"] = rounds
            metrics.update(self.update_group_filter(step, added, samples))
        if self.lagrange:
            metrics.update(self.update_multipliers(samples))
        metrics.update({f"time/{k}": v for k, v in timer.seconds.items()})
        metrics["time/step"] = total
        metrics["time/scheduler_overhead"] = total - sum(timer.seconds.values())
        metrics.update(self.worker_metrics(total, timer.seconds.get("train", 0.0)))
        metrics.update(self.pipe.labelers.metrics())
        metrics.update(self.pipe.repair_metrics())
        return metrics

    def weight_by_difficulty(self, samples: list[Sample]) -> None:
        """PC-GRPO: each group's loss weight peaks at medium difficulty (its success rate)."""
        groups = groups_of(samples)
        weights = difficulty_loss_weights([[s.reward or 0.0 for s in g] for g in groups],
                                          self.selection)
        for group, weight in zip(groups, weights):
            for s in group:
                s.loss_weight = weight

    def observe_prompts(self, landed: list[Added]) -> None:
        """Tell a selecting prompt selector (pairing, curriculum) how each group did."""
        if self.selection.kind != "stream":
            self.prompts.observe([o for a in landed for o in a.outcomes])

    def recompose(self, samples: list[Sample], batch: Batch, version: int) -> tuple[Batch, dict]:
        """RoRecomp: the buffer splits the batch, whose advantages now travel on its samples,
        into a priority batch and any compensation batches due; one learner batch of them."""
        keep_advantages(samples, batch)
        priority, compensation = self.pipe.cluster.get(
            self.pipe.buffer.call("recompose", samples, version))
        return recomposed_batch(priority, compensation, self.recipe, self.pad_id)

    def buffer_metrics(self, version: int) -> dict:
        """The buffer's counters, what waits in it, and each strategy's own (buffer/*,
        rorecomp/*); a warning when groups were dropped as stale since the last step."""
        stats = self.pipe.cluster.get(self.pipe.buffer.call("stats", version))
        stale = stats["buffer/dropped_stale_groups"]
        if stale > self.stale_seen and self.cfg.scheduler.mode == "sync":   # async warns as it drops
            log.warning("step %d: %d groups dropped as stale (sampled more than "
                        "buffer.max_staleness=%d versions before they could be trained; e.g. "
                        "the surplus of a group filter's extra sampling rounds)", version,
                        stale - self.stale_seen, self.cfg.buffer.max_staleness)
        self.stale_seen = stale
        return stats

    def worker_metrics(self, wall_s: float, train_s: float) -> dict:
        """Share of the step's wall time each stage worked (per worker: 1.0 = always busy),
        and the worker restarts seen so far (a worker answering from a new process)."""
        out = {"busy/learner": train_s / wall_s}
        for stage, vitals in self.pipe.vitals().items():
            busy = 0.0
            for k, now in enumerate(vitals):
                before = self.vitals_before.get((stage, k))
                if before and before["pid"] != now["pid"]:
                    self.restarts += 1
                    before = {"busy_s": 0.0}
                busy += now["busy_s"] - (before or now)["busy_s"]
                self.vitals_before[(stage, k)] = now
            out[f"busy/{stage}"] = busy / len(vitals) / wall_s
        out["faults/actor_restarts"] = float(self.restarts)
        out["faults/resent_units"] = float(self.resent)
        out.update(self.host_cpu.since_last())
        return out

    def publish_weights(self, version: int) -> None:
        """Lock-step: every rollout worker loads the new weights before the next step samples."""
        self.pipe.sync_weights(version)

    def update_multipliers(self, samples: list[Sample]) -> dict:
        """One Lagrange step from this batch's mean of each constrained source; its metrics."""
        means = {n: sum(s.rewards[n] for s in samples) / len(samples) for n in self.lagrange.names}
        used = self.lagrange.values()
        self.lagrange.update(means)
        return {f"lagrange/{n}": used[n] for n in used} | {
            f"lagrange/{n}_minus_threshold": means[n] - self.lagrange.thresholds[n] for n in means}

    def sample_batch(self, step: int, timer: PhaseTimer) -> tuple[list[Sample], int, list[Added]]:
        """Rollout rounds until the buffer serves a full batch: one round, or with a group
        filter (DAPO, RLPR) up to max_sampling_rounds, the last padding with dropped groups.
        Returns the batch, the rounds it took and what the buffer did with each share."""
        samples, rounds, added = None, 0, []
        while samples is None:
            rounds += 1
            tag, sampling = f"{step}.{rounds}/", self.sampling(step, rounds)
            prompts = self.prompts.next(self.cfg.data.prompts_per_step)
            with timer("rollout"):
                futures = self.pipe.generate(prompts, sampling, tag=tag)   # one per share
                self.pipe.wait(futures)
            with timer("reward"):
                futures = self.pipe.annotate(futures)
                self.pipe.wait(futures)
            if self.pipe.repairer:
                with timer("repair"):
                    futures = [self.pipe.repair_share(f, share_sampling) for f, (_, _, share_sampling)
                               in zip(futures, self.pipe.shares(prompts, sampling))]
                    self.pipe.wait(futures)
            with timer("buffer"):
                landed = self.add_shares(step, tag, self.pipe.shares(prompts, sampling), futures)
                self.observe_prompts(landed)
                added += landed
                last_round = (not self.group_filter.active
                              or rounds >= self.cfg.algorithm.max_sampling_rounds)
                samples = self.pipe.next_batch(self.groups_per_step, version=step,
                                               pad_with_set_aside=last_round)
            if samples is None and last_round:
                raise RuntimeError(f"step {step}: the buffer could not fill a batch of "
                                   f"{self.groups_per_step} groups")
        return samples, rounds, added

    def add_shares(self, step: int, tag: str, shares: list, scored: list) -> list[Added]:
        """Queue each share's scored groups; what the buffer did with each. A share whose
        rollout, reward or repair worker died on the way (a failed stage hands its failure on, and the
        buffer adds nothing) runs again from its generate call once Ray has restarted the
        worker: the same seed and weights, so the same samples, and each group lands once."""
        pipe = self.pipe
        adds = [pipe.buffer.call("add", f, self.group_filter, filter_step(step)) for f in scored]
        added = []
        for (k, prompts, sampling), add in zip(shares, adds):
            for sends in itertools.count():
                try:
                    added.append(pipe.cluster.get(add))
                    break
                except Exception as err:
                    if not pipe.cluster.died(err):
                        raise
                    self.before_resend(err, k, prompts, sends, "a rollout, reward or repair worker")
                add = pipe.buffer.call("add", pipe.process_share(k, prompts, sampling, tag),
                                       self.group_filter, filter_step(step))
        return added

    def before_resend(self, err: BaseException, share: int, prompts: list[Prompt], sends: int,
                      where: str) -> None:
        """A worker died under a share sent `sends` times again so far: stop if
        the buffer is what died or the share keeps killing workers, else wait for Ray to bring
        the share's workers back."""
        pipe = self.pipe
        try:
            pipe.cluster.wait_alive(pipe.buffer)
        except Exception as buffer_err:
            if not pipe.cluster.died(buffer_err):
                raise
            raise RuntimeError(
                f"step {self.step}: the replay buffer's actor died, and the groups waiting in "
                "it with it. Start again with resume=true: the run continues from its last "
                "checkpoint") from err
        if sends >= MAX_SENDS:
            raise RuntimeError(
                f"step {self.step}: {where} died {sends + 1} times on the same {len(prompts)} "
                f"prompts (first: {prompts[0].prompt_id!r}): a prompt that kills its worker "
                "(out of memory?)") from err
        self.resent += 1
        log.warning("step %d: %s died (%s); sending share %d (%d prompts) to it again",
                    self.step, where, type(err).__name__, share, len(prompts))
        for workers in (pipe.rollouts, pipe.rewarders, [pipe.repairer] if pipe.repairer else []):
            if workers:
                pipe.cluster.wait_alive(workers[share % len(workers)])

    def update_group_filter(self, step: int, added: list[Added], served: list[Sample]) -> dict:
        """Feed the filter every group sampled in this step (kept or dropped, all rounds)
        once; its metrics: the threshold it applied, its EMA after the update, group counts."""
        number = filter_step(step)
        threshold = self.group_filter.threshold(number)
        group_rewards = [r for a in added for r in a.group_rewards]
        self.group_filter.update(number, group_rewards)
        dropped = {gid for a in added for gid in a.dropped}
        stds = [reward_std(r) for r in group_rewards if len(r) > 1]
        metrics = {"filter/kept_groups": float(sum(len(a.kept) for a in added)),
                   "filter/dropped_groups": float(len(dropped)),
                   # dropped groups that filled the batch when the sampling rounds ran out
                   "filter/padded_groups": float(len({s.group_id for s in served} & dropped)),
                   "filter/mean_std": sum(stds) / len(stds) if stds else 0.0}
        if threshold is not None:
            metrics["filter/threshold"] = threshold
        if self.group_filter.ema is not None:
            metrics["filter/ema"] = self.group_filter.ema
        return metrics

    @staticmethod
    def annotation_needs_of(recipe: BatchRecipe) -> list[str]:
        """What the learner must compute before advantages: critic values, reference log-probs."""
        return ((["values"] if needs_values(lookup("advantage", recipe.estimator)) else [])
                + (["ref_logprobs"] if recipe.kl_in_reward_coef else []))

    def sampling(self, step: int, round_: int = 1) -> SamplingParams:
        r = self.cfg.rollout
        # A seed per (run seed, step, round): a resumed run draws exactly the same samples.
        seed = zlib.crc32(f"{self.cfg.seed}/{step}/{round_}".encode())
        return SamplingParams(n=r.responses_per_prompt, temperature=r.temperature, top_p=r.top_p,
                              top_k=r.top_k, max_new_tokens=r.max_new_tokens, seed=seed)

    def add_greedy_baseline(self, samples: list[Sample]) -> None:
        """ReMax: the reward of one greedy response per prompt, in metadata["greedy_reward"]."""
        first = {s.prompt_id: s for s in reversed(samples)}
        prompts = [Prompt(s.prompt_id, s.prompt_text, s.answer, s.metadata) for s in first.values()]
        greedy = {s.prompt_id: s.reward for s in self.greedy_scored(prompts, "greedy/")}
        for s in samples:
            s.metadata["greedy_reward"] = greedy[s.prompt_id]

    def greedy_scored(self, prompts: list[Prompt], tag: str) -> list[Sample]:
        """Greedy responses to `prompts`, scored by the reward sources."""
        greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=self.cfg.eval.max_new_tokens)
        futures = self.pipe.annotate(self.pipe.generate(prompts, greedy, tag=tag), learn=False)
        return [s for part in self.pipe.cluster.get(futures) for s in part]

    # --- evaluation --------------------------------------------------------------------------

    def evaluate(self) -> dict:
        """Greedy decoding on the held-out prompts, scored by the same reward sources."""
        if not self.eval_prompts:
            return {}
        samples = self.greedy_scored(self.eval_prompts, "eval/")
        self.sink.log_samples(self.step, "eval", samples)
        source = self.cfg.eval.accuracy_source
        return {"eval/accuracy": sum(s.rewards[source] for s in samples) / len(samples),
                "eval/response_len": sum(len(s.response_ids) for s in samples) / len(samples)}

    def log_eval(self, step: int, log_now: bool = True) -> dict:
        start = time.perf_counter()
        metrics = self.evaluate()
        if metrics:
            metrics["time/eval"] = time.perf_counter() - start
            self.evals[step] = metrics["eval/accuracy"]
            log.info("step %d: held-out accuracy %.3f", step, metrics["eval/accuracy"])
            if log_now:
                self.sink.log(step, metrics)
        return metrics

    def latest_accuracy(self) -> float:
        return self.evals[max(self.evals)] if self.evals else float("nan")

    # --- checkpoints -------------------------------------------------------------------------

    def save(self) -> None:
        tmp = self.checkpoints.staging(self.step)
        self.pipe.learner.run("save", str(tmp / "policy"), self.tokenizer_path)
        state = {"step": self.step, "prompts": self.prompts.state_dict(),
                 "evals": {str(k): v for k, v in self.evals.items()}}
        buffer_state = self.pipe.cluster.get(self.pipe.buffer.call("state_dict"))
        components = self.pipe.components_state(self.step)
        if self.lagrange:
            components["lagrange"] = self.lagrange.state_dict()
        if self.group_filter.active:
            components["group_filter"] = self.group_filter.state_dict()
        components.update(self.scheduler_state())
        self.checkpoints.commit(tmp, state, buffer_state, components)

    def scheduler_state(self) -> dict:
        """Checkpointed state of the scheduler's own (a subclass's) bookkeeping."""
        return {}

    def load_scheduler_state(self, components: dict) -> None:
        pass

    def restore(self, folder) -> None:
        state, buffer_state, components = Checkpoints.read(folder)
        self.pipe.load_components_state(components, state["step"])
        if self.lagrange:
            self.lagrange.load_state_dict(components["lagrange"])
        self.restore_group_filter(components.get("group_filter"), folder)
        version = self.pipe.learner.run("load", str(folder / "policy"))[0]
        self.pipe.sync_weights(version)
        if self.judge and self.judge.refresh_every:   # the resumed policy judges, not the warm start
            self.judge.reload(folder / "policy", version)
        self.pipe.cluster.get(self.pipe.buffer.call("load_state_dict", buffer_state))
        self.prompts.load_state_dict(state["prompts"])
        self.step = state["step"]
        self.load_scheduler_state(components)
        self.evals = {int(k): v for k, v in state["evals"].items()}
        log.info("resumed from %s at step %d", folder, self.step)

    def restore_group_filter(self, state: dict | None, folder) -> None:
        if not self.group_filter.active:
            return
        kind = self.group_filter.kind
        if state is None or state["kind"] != kind:   # the filter was switched on mid-run
            log.warning("%s holds no state of a %s group filter: it starts afresh", folder, kind)
            return
        self.group_filter.load_state_dict(state)


def group_filter_of(algorithm) -> GroupFilter:
    """The configured group filter; the older `dynamic_sampling` switch, when set, picks
    DAPO's uniform filter (true) or none (false)."""
    f, switch = algorithm.group_filter, algorithm.dynamic_sampling
    kind = f.kind if switch is None else ("uniform" if switch else "none")
    if kind != "std_ema":
        return GroupFilter(kind, f.source)
    return GroupFilter(kind, f.source, beta=f.beta, ema_ratio=f.ema_ratio,
                       ema_start_step=f.ema_start_step, filter_start_step=f.filter_start_step)


def filter_step(step: int) -> int:
    """The number a group filter counts steps by: the step as logged (the first is 1, as in
    metrics.jsonl and RLPR's global_steps), while the loop's index starts at 0."""
    return step + 1


def require_trainable(samples: list[Sample], batch: Batch) -> None:
    """Stop a run whose first batch trains on no token because reward sources flagged every
    sample: a source that does not apply to the data, a judge that is down. (Later steps
    may be unlucky; the first one shows a broken set-up.)"""
    if batch.response_mask.sum() > 0 or not any(s.flagged for s in samples):
        return
    counts = Counter(name for s in samples for name in s.flags)
    name, count = counts.most_common(1)[0]
    why = next(s.flags[name] for s in samples if name in s.flags)
    raise RuntimeError(
        f"the first step would train on no token: reward source {name!r} flagged {count} of "
        f"{len(samples)} samples (first: {why}), and reward.exclude_flagged_from_loss leaves "
        "flagged samples out. Check that the source applies to this data (its fn, kwargs and "
        "data.answer_format), or that its server answers")


def masking_sources(cfg) -> list[str]:
    """Reward sources whose failure makes a sample's training signal wrong: those in the
    combined reward (weight != 0), gates, and those the algorithm reads by name."""
    sources = [RewardSource(**s) for s in OmegaConf.to_container(cfg.reward.sources, resolve=True)]
    read = {s.gate.source for s in sources if s.gate}
    a = cfg.algorithm
    options = OmegaConf.to_container(a.estimator_options)
    read |= {v for k, v in options.items() if k.endswith("_source") and v}
    read |= set(options.get("constraints") or {}) | set(a.step_rewards or {})
    read |= {a.group_filter.source} if a.group_filter.source else set()
    laser = cfg.reward.get("laser")
    read |= {laser.self_reward_source, laser.verifier_source} if laser else set()
    return [s.name for s in sources if s.weight != 0 or s.name in read]


def batch_recipe(cfg) -> BatchRecipe:
    a = cfg.algorithm
    return BatchRecipe(
        estimator=a.estimator, estimator_options=OmegaConf.to_container(a.estimator_options),
        loss_aggregation=a.loss_aggregation, mini_batch_size=cfg.learner.mini_batch_size,
        num_ranks=cfg.learner.num_ranks,
        max_new_tokens=cfg.rollout.max_new_tokens,
        exclude_flagged=cfg.reward.exclude_flagged_from_loss, masking_sources=masking_sources(cfg),
        overlong_filter=a.overlong_filter,
        kl_in_reward_coef=a.kl_in_reward_coef, kl_estimator=a.kl_estimator,
        step_rewards=OmegaConf.to_container(a.step_rewards),
        laser=OmegaConf.to_container(cfg.reward.laser) if cfg.reward.get("laser") else None)


def mean_diversity(samples: list[Sample]) -> float:
    """Mean over groups of the share of distinct pairs among the policy's own responses
    (repaired ones left out): 0 when every group samples one response G times."""
    groups = [[s for s in g if not s.metadata.get("repaired")] for g in groups_of(samples)]
    values = [response_diversity(g) for g in groups if len(g) > 1]
    return sum(values) / len(values) if values else 0.0


def rollout_metrics(samples: list[Sample], learner_version: int) -> dict:
    n = max(len(samples), 1)
    tokens = sum(len(s.response_ids) for s in samples)
    # learner versions between the weights that sampled and the weights trained
    lags = Counter(learner_version - s.policy_version for s in samples)
    return {"rollout/samples": float(len(samples)), "rollout/response_tokens": float(tokens),
            "rollout/response_len": tokens / n,
            "rollout/truncated_fraction": sum(s.truncated for s in samples) / n,
            "rollout/staleness": sum(k * c for k, c in lags.items()) / n,
            "rollout/staleness_max": float(max(lags, default=0)),
            # responses continued under newer weights mid-way (rollout.partial)
            "rollout/partial_fraction": sum(s.token_versions is not None for s in samples) / n,
            # responses a repair stage (SCOPE) rewrote from their first wrong step
            "rollout/repaired_fraction": sum(bool(s.metadata.get("repaired")) for s in samples) / n,
            "rollout/diversity": mean_diversity(samples),
            # the histogram: share of the batch sampled k versions behind
            **{f"staleness/{k}": c / n for k, c in sorted(lags.items())}}
