"""SCOPE repair: salvage failed rollouts from their first wrong step (arXiv:2602.24110).

The stage sits between reward annotation and the buffer. For a failed response (its verify
score below `success_threshold`) a step-level process reward (`prm_source`, one score per step
in `sample.step_scores`, high = correct) locates the first wrong step

    k* = min{k : score_k < tau}          (1-based; tau = 0.5 for a probability PRM [paper])

If no step is wrong, or k* = 1, the response is not salvageable. Otherwise the on-policy prefix
(steps 1..k*-1, response tokens [0, step_ends[k*-2])) is kept, a guide model writes the rest
from prompt + prefix (`HFEngine.continue_from`), the candidate is re-scored with the same
reward sources, and if it now verifies, it replaces the failed response in its group. Its
`guided_mask` is 0 on the prefix (trained with the clipped ratio pi_theta / pi_old) and 1 on
the guide's tokens (trained with LUFFY's shaped surrogate, learners/losses.py `ppo`).

Only the first-error localisation and the off-policy rectification are [paper]; the plan
(how many repairs per group, in which order, which groups), the guide, the number of attempts
and the diversity measure are [inferred] (shared/methods/algorithms-and-buffers.md section 3).
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING

from core.records import Sample, SamplingParams, Weights, groups_of
from core.schema import checked, problems

GUIDE_POLICY = "policy"


@dataclass
class RepairConfig:
    """buffer.repair: SCOPE's repair stage (conf/buffer/scope.yaml); null = no repairs. Scores are
    read from `sample.rewards` / `sample.step_scores` under the reward sources' names."""

    prm_source: str = MISSING                   # name of the step-granularity reward source whose
                                                # per-step scores locate the first error (high =
                                                # correct; e.g. toy_step_correct, or genprm_first_error
                                                # with mark: correct)
    tau: float = 0.5                            # a step with score < tau is wrong; 0.5 for a
                                                # probability-output PRM [paper]
    verify_source: Optional[str] = None         # source whose score decides "correct"; None = the
                                                # combined reward (sample.reward) [inferred]
    success_threshold: float = 0.5              # correct when the verify score >= this (default 0.5)
                                                # [inferred]
    max_repairs_per_group: int = checked(1, ge=0)  # failed responses repaired per group at most
                                                # (default 1) [inferred]
    only_failed_groups: bool = False            # True: repair only in groups where every response
                                                # failed; False: in any group with a failure [inferred]
    guide: str = GUIDE_POLICY                   # who writes the correction: "policy" = the rollout
                                                # policy's current weights, else a model path (same
                                                # tokenizer as the policy) [inferred: paper unnamed]
    attempts: int = checked(2, ge=1)            # guide continuations per repair; the first that
                                                # verifies is kept (default 2) [inferred]
    temperature: float = checked(1.0, ge=0)     # guide sampling temperature, 0 = greedy (default 1.0)
                                                # [inferred]
    max_new_tokens: Optional[int] = checked(None, ge=1)  # length limit of a repaired response in
                                                # tokens, prefix included; None = the rollout's

    def __post_init__(self):
        for key, value, why in problems(RepairConfig, self):
            raise ValueError(f"repair.{key}={value!r}: {why}")


# --- pure helpers -----------------------------------------------------------------------------

def first_error_step(scores: list[float], tau: float) -> int | None:
    """k* = min{k : score_k < tau}, 1-based; None when no step scores below tau."""
    return next((k + 1 for k, x in enumerate(scores) if x < tau), None)


def verify_score(sample: Sample, cfg: RepairConfig) -> float:
    """The score that decides whether `sample` is correct (`verify_source`, else the combined reward)."""
    if cfg.verify_source is None:
        if sample.reward is None:
            raise KeyError(f"sample {sample.prompt_id!r} has no combined reward: score it first")
        return float(sample.reward)
    if cfg.verify_source not in sample.rewards:
        raise KeyError(f"repair.verify_source={cfg.verify_source!r}: sample {sample.prompt_id!r} "
                       f"has only {sorted(sample.rewards)}")
    return float(sample.rewards[cfg.verify_source])


def is_correct(sample: Sample, cfg: RepairConfig) -> bool:
    return verify_score(sample, cfg) >= cfg.success_threshold


def salvage_point(sample: Sample, cfg: RepairConfig) -> tuple[int, int] | None:
    """(k*, prefix length in tokens) of a response whose steps 1..k*-1 are right, or None when
    it is not salvageable: no step below tau, k* = 1, or no step scores / step ends to read."""
    scores = sample.step_scores.get(cfg.prm_source)
    ends = sample.step_ends
    if not scores or not ends or len(scores) != len(ends):
        return None
    k = first_error_step(scores, cfg.tau)
    if k is None or k == 1:
        return None
    prefix = ends[k - 2]
    return (k, prefix) if 0 < prefix <= len(sample.response_ids) else None


def repair_plan(group: list[Sample], cfg: RepairConfig) -> list[tuple[int, int]]:
    """(index in group, prefix length) of the failed responses to repair, most salvageable first
    (the latest first error, i.e. the longest correct prefix; ties: longer prefix in tokens, then
    lower index), at most `max_repairs_per_group`. Flagged and correct responses are skipped;
    with `only_failed_groups`, a group with any correct response gets none."""
    candidates = []
    failed_all = True
    for i, s in enumerate(group):
        if s.flagged:
            continue
        if is_correct(s, cfg):
            failed_all = False
            continue
        point = salvage_point(s, cfg)
        if point is not None:
            candidates.append((-point[0], -point[1], i, point[1]))
    if cfg.only_failed_groups and not failed_all:
        return []
    candidates.sort()
    return [(i, prefix) for _, _, i, prefix in candidates[:cfg.max_repairs_per_group]]


def repaired_sample(original: Sample, continued: Sample, prefix_len: int) -> Sample:
    """The repaired response that replaces `original` in its group: `continued` (prefix + the
    guide's tokens, already re-scored) with the original's identity.

    guided_mask is 0 on the prefix_len prefix tokens (on-policy) and 1 on the guide's. The
    policy_version is the ORIGINAL's: the prefix tokens, the only ones trained with the ratio
    pi_theta / pi_old, were sampled by that version and their behaviour log-probs are its own;
    the guide's tokens carry no version (the loss shapes them without pi_old), so tagging the
    sample with the guide's would misstate its staleness to the buffer and the lag metrics."""
    if continued.response_ids[:prefix_len] != original.response_ids[:prefix_len]:
        raise ValueError(f"sample {original.prompt_id!r}: the continuation does not start with "
                         f"the original's {prefix_len}-token prefix")
    n = len(continued.response_ids)
    k_star = sum(e <= prefix_len for e in original.step_ends or []) + 1
    versions = None
    if original.token_versions is not None:   # guide tokens: tagged like the prefix's last token
        head = original.token_versions[:prefix_len]
        versions = head + [head[-1] if head else original.policy_version] * (n - prefix_len)
    return dataclasses.replace(
        continued,
        prompt_id=original.prompt_id, group_id=original.group_id,
        prompt_ids=list(original.prompt_ids), prompt_text=original.prompt_text,
        answer=original.answer, policy_version=original.policy_version, token_versions=versions,
        behaviour_logprobs=list(original.behaviour_logprobs[:prefix_len])
        + list(continued.behaviour_logprobs[prefix_len:]),
        guided_mask=[0] * prefix_len + [1] * (n - prefix_len), loss_mask=None,
        rewards=dict(continued.rewards), step_scores=dict(continued.step_scores),
        flags=dict(continued.flags),
        metadata=dict(original.metadata) | {"repaired": True, "first_error_step": k_star,
                                            "continued_from": prefix_len})


# --- the worker -------------------------------------------------------------------------------

COUNTERS = ("examined", "salvageable", "attempted", "repaired", "not_verified")


class RepairWorker:
    """Repairs failed responses of scored samples with a guide engine and re-scores them.

    `reward_sources`: the reward stage's sources (RewardWorker's format); an in-process
    RewardWorker re-scores candidates with them (learn=False: a stateful source does not learn
    from rejected candidates; its state here is its own, not the reward stage's).
    `engine_options`: HFEngine's options, with `model_path` = the policy's; `step_delimiter` is
    required (the candidates' steps are re-split for the step sources).
    guide "policy": the engine holds the policy and loads the `weights` named with each call;
    another guide: an engine on that path, never reloaded, which must share the policy's
    tokenizer (prefixes travel as token ids) and cannot run `runs_on: policy` sources.
    """

    def __init__(self, reward_sources: list[dict], repair: dict | RepairConfig,
                 engine_options: dict):
        from actors.reward import RewardWorker
        from actors.rollout import HFEngine
        from core.models import load_tokenizer

        self.cfg = repair if isinstance(repair, RepairConfig) else RepairConfig(**repair)
        options = dict(engine_options)
        policy_path = options.pop("model_path")
        if not options.get("step_delimiter"):
            raise ValueError("repair needs rollout.step_delimiter: the first error is a step")
        names = {s["name"]: s for s in reward_sources}
        prm = names.get(self.cfg.prm_source)
        if prm is None or prm.get("granularity") != "step":
            raise ValueError(f"repair.prm_source={self.cfg.prm_source!r} must name a reward source "
                             f"with granularity: step; sources: {sorted(names)}")
        if self.cfg.verify_source is not None and self.cfg.verify_source not in names:
            raise ValueError(f"repair.verify_source={self.cfg.verify_source!r} is not one of "
                             f"{sorted(names)}")
        on_policy = [s["name"] for s in reward_sources if s.get("runs_on") == "policy"]
        self.guide_is_policy = self.cfg.guide == GUIDE_POLICY
        if on_policy and not self.guide_is_policy:
            raise ValueError(f"sources {on_policy} run on the policy: a repaired response can be "
                             "scored by them only with repair.guide=policy")
        self.engine = HFEngine(policy_path if self.guide_is_policy else self.cfg.guide, **options)
        if not self.guide_is_policy and (self.engine.tokenizer.get_vocab()
                                         != load_tokenizer(policy_path).get_vocab()):
            raise ValueError(f"repair.guide={self.cfg.guide!r} has another tokenizer than the "
                             "policy: the prefix is passed as token ids")
        self.rewards = RewardWorker(reward_sources, threads_per_source=1)
        self.policy_rewards = (RewardWorker(reward_sources, threads_per_source=1,
                                            context={"policy": self.engine}) if on_policy else None)
        # group- or batch-scope sources score a response among others: candidates are scored
        # beside copies of their group (costs the other responses' sample-scope calls too)
        self.in_group = any(s.get("scope", "sample") != "sample" for s in reward_sources)
        self.counts = {k: 0 for k in COUNTERS}
        self.busy_s = 0.0

    def repair(self, samples: list[Sample], sampling: SamplingParams,
               weights: Weights | None = None) -> list[Sample]:
        """`samples` (scored) with the repaired responses substituted at their positions.
        `sampling` is the rollout's (its max_new_tokens, top-p/k and seed); `weights` the
        policy's, loaded when the guide is the policy."""
        start = time.perf_counter()
        try:
            return self._repair(samples, sampling, weights)
        finally:
            self.busy_s += time.perf_counter() - start

    def _repair(self, samples, sampling, weights):
        cfg = self.cfg
        out = list(samples)
        if cfg.max_repairs_per_group == 0:
            return out
        position = {id(s): i for i, s in enumerate(samples)}
        groups = groups_of(samples)
        targets: list[tuple[int, int]] = []   # (position in samples, prefix length)
        for group in groups:
            for s in group:
                if not s.flagged and not is_correct(s, cfg):
                    self.counts["examined"] += 1
                    self.counts["salvageable"] += salvage_point(s, cfg) is not None
            targets += [(position[id(group[i])], k) for i, k in repair_plan(group, cfg)]
        if not targets:
            return out
        self.counts["attempted"] += len(targets)
        if self.guide_is_policy and weights is not None and weights.version != self.engine.version:
            self.engine.load_weights(weights.fetch(), weights.version)
        guide_sp = SamplingParams(
            n=cfg.attempts, temperature=cfg.temperature, top_p=sampling.top_p,
            top_k=sampling.top_k, max_new_tokens=cfg.max_new_tokens or sampling.max_new_tokens,
            seed=sampling.seed + 7919)   # a stream of its own, reproducible from the step's seed
        candidates = self.engine.continue_from([samples[p] for p, _ in targets],
                                               [k for _, k in targets], guide_sp)
        self._score(candidates, samples, [p for p, _ in targets for _ in range(cfg.attempts)])
        for t, (p, k) in enumerate(targets):
            tries = candidates[t * cfg.attempts:(t + 1) * cfg.attempts]
            good = next((c for c in tries if not c.flagged and is_correct(c, cfg)), None)
            if good is None:
                self.counts["not_verified"] += 1
                continue
            out[p] = repaired_sample(samples[p], good, k)
            self.counts["repaired"] += 1
        return out

    def _score(self, candidates: list[Sample], samples: list[Sample], replaced: list[int]) -> None:
        """Re-score candidates; candidate j stands in for samples[replaced[j]]."""
        if self.policy_rewards:
            self.policy_rewards.score(candidates, learn=False)
        if not self.in_group:
            self.rewards.score(candidates, learn=False)
            return
        # one candidate at a time, in its group in place of the response it repairs, beside
        # copies of the others (the originals' scores stay untouched)
        for c, p in zip(candidates, replaced):
            group = [c if i == p else dataclasses.replace(
                        s, rewards=dict(s.rewards), step_scores=dict(s.step_scores),
                        flags=dict(s.flags), metadata=dict(s.metadata))
                     for i, s in enumerate(samples) if s.group_id == c.group_id]
            self.rewards.score(group, learn=False)

    def stats(self) -> dict[str, float]:
        """Counters since the start (or the checkpoint loaded): failed responses examined, those
        salvageable (k* > 1), repairs attempted, repaired (verified), and not verified."""
        return {f"repair/{k}": float(v) for k, v in self.counts.items()}

    def vitals(self) -> dict:
        """Seconds spent repairing since this process started, and its PID (as RolloutWorker)."""
        return {"busy_s": self.busy_s, "pid": os.getpid()}

    def state_dict(self) -> dict:
        return {"counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        self.counts = {k: int(state.get("counts", {}).get(k, 0)) for k in COUNTERS}
