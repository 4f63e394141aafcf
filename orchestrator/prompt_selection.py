"""Which prompts each step samples: the plain stream, or prompts chosen by their success so far.

A selector wraps the `PromptStream` and answers the scheduler's `next(n)` in its place. It
remembers every prompt it handed out and, once their groups are scored (`observe`), each
prompt's attempts and successes (a response succeeds when its reward >= success_threshold),
so prompts can be served again by how hard they proved:

  stream      the stream as it is (statistics are still kept, for the metrics)
  pairing     "Beyond Variance" (arXiv:2602.03452) positive-negative pairs: a hard-but-solvable
              q+ (p^ in [1/G, c/G]) with an easy-but-brittle q- (p^ in [1 - c/G, 1 - 1/G]),
              both tagged metadata["pair_id"] for weighted_grpo's pooled reading
  curriculum  PC-GRPO's difficulty curriculum: known prompts drawn with a weight that peaks
              at medium difficulty (`curriculum_weight`)

The policy moves on, so the selecting kinds keep exploring: at least explore_fraction of every
call's prompts are fresh ones from the stream, and fresh ones fill any places the known prompts
cannot. "Fresh" means the stream's next prompt; once the stream starts another epoch it may
bring back a prompt seen before, whose new results add to its statistics.
"""
from __future__ import annotations

import dataclasses
import math
import random
from bisect import bisect_right
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, Mapping

from core.records import Prompt
from core.schema import checked, problems

KINDS = ("stream", "pairing", "curriculum")
EPS = 1e-9   # slack for comparing decayed counts and rates


@dataclass
class PromptSelectionConfig:
    """How the prompts of each step are chosen (see the module docstring)."""

    kind: str = checked("stream", choices=KINDS)  # stream: today's walk; pairing: Beyond Variance
                                               # q+/q- pairs; curriculum: PC-GRPO medium-difficulty
                                               # weighting
    success_threshold: float = 0.5             # a response succeeds when reward >= this (reward
                                               # units; weighted_grpo's default) [inferred]
    explore_fraction: float = checked(0.25, ge=0, le=1)  # least share of each call's prompts that
                                               # are fresh from the stream [inferred]
    min_attempts: int = checked(0, ge=0)       # responses observed before a prompt may be served
                                               # again; 0 = one group (G) [inferred]
    decay: float = checked(1.0, gt=0, le=1)    # a prompt's earlier counts are multiplied by this on
                                               # each new observation; 1 = plain counts [inferred]
    pool_size: int = checked(4096, ge=1)       # prompts whose statistics are kept; the least
                                               # recently observed is forgotten first [inferred]
    pairing_c: int = checked(3, ge=1)          # Beyond Variance's c: q+ p^ <= c/G, q- p^ >= 1 - c/G
                                               # (paper's symbol; value 3 [inferred])
    curriculum_center: float = checked(0.5, ge=0, le=1)  # success rate of the peak weight (PC-GRPO
                                               # "peaks at medium difficulty"; 0.5 [inferred])
    curriculum_width: float = checked(0.2, gt=0)  # std of the Gaussian bump, in success rate
                                               # [inferred]
    curriculum_floor: float = checked(0.05, ge=0, le=1)  # weight far from the peak: every known
                                               # prompt keeps a chance [inferred]
    curriculum_loss_weights: bool = True       # curriculum: also scale each group's loss by the same
                                               # weight of its success rate in this step, normalised to
                                               # a batch mean of 1 (PC-GRPO "dynamically weights
                                               # samples")


def curriculum_weight(rate: float, center: float = 0.5, width: float = 0.2,
                      floor: float = 0.05) -> float:
    """PC-GRPO's difficulty weight: floor + (1 - floor) * exp(-(rate - center)^2 / (2 width^2))."""
    return floor + (1 - floor) * math.exp(-(rate - center) ** 2 / (2 * width ** 2))


def difficulty_loss_weights(group_rewards: list[list[float]],
                            config: PromptSelectionConfig) -> list[float]:
    """PC-GRPO's sample weights: each group's `curriculum_weight` of its success rate, scaled
    so that the groups' mean is 1 (the learning rate keeps its meaning)."""
    c = config
    weights = [curriculum_weight(sum(r >= c.success_threshold for r in rewards) / len(rewards),
                                 c.curriculum_center, c.curriculum_width, c.curriculum_floor)
               for rewards in group_rewards]
    scale = len(weights) / sum(weights)
    return [w * scale for w in weights]


@dataclass
class PromptStats:
    """A prompt as it was handed out, and its (decayed) response counts."""

    prompt: Prompt
    attempts: float = 0.0
    successes: float = 0.0

    @property
    def rate(self) -> float:
        return self.successes / self.attempts if self.attempts else 0.0


class PromptSelector:
    """Kind stream: the stream's prompts, unchanged. Subclasses choose known prompts too."""

    kind = "stream"

    def __init__(self, config: PromptSelectionConfig, stream, group_size: int, seed: int):
        self.config, self.stream, self.group_size, self.seed = config, stream, group_size, seed
        self.min_attempts = config.min_attempts or group_size
        self._reset()

    def _reset(self) -> None:
        self.pool: dict[str, PromptStats] = {}   # least recently observed first
        self.pending: dict[str, Prompt] = {}     # handed out, not observed yet (oldest first)
        self.rng = random.Random(f"{self.seed}/prompt-selection")
        self.calls = 0
        self.unknown = 0                         # observed ids never handed out
        self.last = {"fresh": 0, "reused": 0, "pairs": 0}
        self.last_rates: list[float] = []        # p^ of the reused prompts of the last call

    @property
    def views_per_prompt(self) -> int:
        return self.stream.views_per_prompt

    def next(self, n: int) -> list[Prompt]:
        self.calls += 1
        prompts = self.stream.next(n)
        self._served(prompts, [], 0)
        return prompts

    def _served(self, fresh: list[Prompt], reused: list[Prompt], pairs: int) -> None:
        self.last = {"fresh": len(fresh), "reused": len(reused), "pairs": pairs}
        self.last_rates = [self.pool[p.prompt_id].rate for p in reused]
        served = fresh + [self.pool[p.prompt_id].prompt for p in reused]   # as stored
        for p in served:
            self.pending.pop(p.prompt_id, None)
            self.pending[p.prompt_id] = p
        # a group that never comes back is forgotten once pool_size newer prompts went out
        while len(self.pending) > self.config.pool_size + len(served):
            del self.pending[next(iter(self.pending))]

    def observe(self, results: list[tuple[str, list[float]]]) -> None:
        """Count each finished group's successes for its prompt: (prompt_id, rewards)."""
        d, threshold = self.config.decay, self.config.success_threshold
        for prompt_id, rewards in results:
            prompt = self.pending.pop(prompt_id, None)
            stats = self.pool.pop(prompt_id, None)
            if stats is None and prompt is None:
                self.unknown += 1
                continue
            stats = stats or PromptStats(prompt)
            stats.attempts = stats.attempts * d + len(rewards)
            stats.successes = stats.successes * d + sum(r >= threshold for r in rewards)
            self.pool[prompt_id] = stats
        while len(self.pool) > self.config.pool_size:
            del self.pool[next(iter(self.pool))]

    # --- candidates ----------------------------------------------------------------------------

    def candidates(self) -> list[PromptStats]:
        """Known prompts observed at least min_attempts times, least recently observed first."""
        return [s for s in self.pool.values() if s.attempts >= self.min_attempts - EPS]

    def is_positive(self, rate: float) -> bool:
        """Hard but solvable (q+): p^ in [1/G, c/G]."""
        G, c = self.group_size, self.config.pairing_c
        return 1 / G - EPS <= rate <= c / G + EPS

    def is_negative(self, rate: float) -> bool:
        """Easy but brittle (q-): p^ in [1 - c/G, 1 - 1/G]."""
        G, c = self.group_size, self.config.pairing_c
        return 1 - c / G - EPS <= rate <= 1 - 1 / G + EPS

    def metrics(self) -> dict[str, float]:
        """prompts/*: the pool, what the last call served, and the pairing candidates now.
        reused_success_rate is left out when the last call reused no prompt."""
        rates = [s.rate for s in self.candidates()]
        out = {"prompts/pool_size": float(len(self.pool)),
               "prompts/fresh": float(self.last["fresh"]),
               "prompts/reused": float(self.last["reused"]),
               "prompts/pairs": float(self.last["pairs"]),
               "prompts/positive_candidates": float(sum(map(self.is_positive, rates))),
               "prompts/negative_candidates": float(sum(map(self.is_negative, rates))),
               "prompts/unknown_ids": float(self.unknown)}
        if self.last_rates:
            out["prompts/reused_success_rate"] = sum(self.last_rates) / len(self.last_rates)
        return out

    # --- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Plain data (JSON-safe when the prompts' answers and metadata are)."""
        version, internal, gauss = self.rng.getstate()
        return {"stream": self.stream.state_dict(),
                "pool": [[dataclasses.asdict(s.prompt), s.attempts, s.successes]
                         for s in self.pool.values()],
                "pending": [dataclasses.asdict(p) for p in self.pending.values()],
                "rng": [version, list(internal), gauss], "calls": self.calls,
                "unknown": self.unknown, "last": dict(self.last),
                "last_rates": list(self.last_rates)}

    def load_state_dict(self, state: dict) -> None:
        """A selector's state, or a plain PromptStream's (older checkpoints: no statistics)."""
        self._reset()
        if "stream" not in state:
            self.stream.load_state_dict(state)
            return
        self.stream.load_state_dict(state["stream"])
        for prompt, attempts, successes in state["pool"]:
            self.pool[prompt["prompt_id"]] = PromptStats(Prompt(**prompt), attempts, successes)
        self.pending = {p["prompt_id"]: Prompt(**p) for p in state["pending"]}
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.calls, self.unknown = state["calls"], state["unknown"]
        self.last, self.last_rates = dict(state["last"]), list(state["last_rates"])


class SelectingPromptSelector(PromptSelector):
    """Known prompts in the places exploration leaves, fresh prompts from the stream in the rest."""

    def __init__(self, config: PromptSelectionConfig, stream, group_size: int, seed: int):
        super().__init__(config, stream, group_size, seed)
        if stream.views_per_prompt > 1:
            raise ValueError(
                f"twin views are not supported with prompt selection (prompt selection kind "
                f"{config.kind!r}): set data.toy.twin_views=false or use kind 'stream'")

    def next(self, n: int) -> list[Prompt]:
        self.calls += 1
        places = n - math.ceil(self.config.explore_fraction * n - EPS)
        reused, pairs = self.choose(places)
        fresh = self._fresh(n - len(reused), {p.prompt_id for p in reused})
        self._served(fresh, reused, pairs)
        return reused + fresh

    def choose(self, places: int) -> tuple[list[Prompt], int]:
        """Up to `places` known prompts (copies), and how many pairs they make."""
        raise NotImplementedError

    def _fresh(self, k: int, taken: set[str]) -> list[Prompt]:
        """The stream's next k prompts, skipping any already in this call (group ids must be
        unique within a step)."""
        out, skipped, wanted = [], 0, k + len(taken)
        limit = (self.stream.dataset.__len__() or 0) + k   # a whole epoch of repeats
        while len(out) < k:
            prompt = self.stream.next(1)[0]
            if prompt.prompt_id in taken:
                skipped += 1
                if skipped > limit:
                    raise ValueError(f"the dataset has too few distinct prompts for {wanted} "
                                     "per call (data.prompts_per_step)")
                continue
            taken.add(prompt.prompt_id)
            out.append(prompt)
        return out


class PairingSelector(SelectingPromptSelector):
    """Beyond Variance: (q+, q-) pairs, each side the rarest outcome first, seeded ties."""

    kind = "pairing"

    def choose(self, places: int) -> tuple[list[Prompt], int]:
        found = [(s, self.rng.random()) for s in self.candidates()]
        plus = sorted(((round(s.rate, 9), tie, s) for s, tie in found if self.is_positive(s.rate)),
                      key=lambda t: t[:2])
        minus = sorted(((-round(s.rate, 9), tie, s) for s, tie in found
                        if self.is_negative(s.rate)), key=lambda t: t[:2])
        out, used = [], set()
        for k in range(places // 2):
            q_plus = next((s for *_, s in plus if s.prompt.prompt_id not in used), None)
            if q_plus is None:
                break
            used.add(q_plus.prompt.prompt_id)
            q_minus = next((s for *_, s in minus if s.prompt.prompt_id not in used), None)
            if q_minus is None:
                break
            used.add(q_minus.prompt.prompt_id)
            pair_id = f"pair{self.calls}-{k}"
            out += [dataclasses.replace(s.prompt, metadata={**s.prompt.metadata,
                                                            "pair_id": pair_id})
                    for s in (q_plus, q_minus)]
        return out, len(out) // 2


class CurriculumSelector(SelectingPromptSelector):
    """PC-GRPO: known prompts drawn without replacement, weighted by `curriculum_weight`."""

    kind = "curriculum"

    def choose(self, places: int) -> tuple[list[Prompt], int]:
        c = self.config
        pool = self.candidates()
        weights = [curriculum_weight(s.rate, c.curriculum_center, c.curriculum_width,
                                     c.curriculum_floor) for s in pool]
        out = []
        while pool and len(out) < places and sum(weights) > 0:
            cumulative = list(accumulate(weights))
            i = min(bisect_right(cumulative, self.rng.random() * cumulative[-1]), len(pool) - 1)
            prompt = pool.pop(i).prompt
            weights.pop(i)
            out.append(dataclasses.replace(prompt, metadata=dict(prompt.metadata)))
        return out, 0


SELECTORS = {"stream": PromptSelector, "pairing": PairingSelector,
             "curriculum": CurriculumSelector}


def make_prompt_selector(config: PromptSelectionConfig | Mapping[str, Any], stream,
                         group_size: int, seed: int) -> PromptSelector:
    """The selector of `config.kind` over `stream`; group_size is G
    (rollout.responses_per_prompt)."""
    if not isinstance(config, PromptSelectionConfig):
        config = PromptSelectionConfig(**dict(config))
    wrong = problems(PromptSelectionConfig, config)
    if wrong:
        raise ValueError("prompt selection config: " + "; ".join(
            f"{name}={value!r} {what}" for name, value, what in wrong))
    return SELECTORS[config.kind](config, stream, group_size, seed)
