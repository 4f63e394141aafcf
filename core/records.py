"""The records every stage shares: one `Sample` per sampled response, and a columnar `Batch`.

This module imports nothing from the rest of rewardmill, so rollout, rewards, buffers and
learners can all depend on it without depending on each other.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Sample:
    """One sampled response to one prompt, and everything downstream needs to know about it."""

    prompt_id: str                      # stable id of the prompt in its dataset
    group_id: str                       # the G responses to one prompt in one step share it
    prompt_ids: list[int]               # prompt token ids (no padding)
    response_ids: list[int]             # generated token ids, EOS included when generated
    behaviour_logprobs: list[float]     # log-prob of each response token under the sampler
    policy_version: int                 # learner step whose weights produced this response
                                        # (its first token, when token_versions is set)
    prompt_text: str = ""
    response_text: str = ""             # decoded response, EOS and padding removed
    truncated: bool = False             # True when generation hit max_new_tokens before EOS
    answer: Any = None                  # reference answer for verifiers, when the task has one
    rewards: dict[str, float] = field(default_factory=dict)   # per-source scores, kept apart
    reward: float | None = None         # the combined reward the learner optimises
    flags: dict[str, str] = field(default_factory=dict)       # source -> why it failed
    loss_mask: list[int] | None = None  # per response token, 1 = trained on; None = all ones
    guided_mask: list[int] | None = None  # per response token, 1 = written by a guide model
                                        # (off-policy, e.g. a SCOPE repair); None = all on-policy
    steps: list[str] | None = None      # the response split into reasoning steps (see rollout.step_delimiter)
    step_ends: list[int] | None = None  # per step, the response token index just past its end
    step_scores: dict[str, list[float]] = field(default_factory=dict)  # source -> one score per step
    metadata: dict[str, Any] = field(default_factory=dict)
    token_versions: list[int] | None = None  # per response token, the weights version that
                                        # sampled it, when newer weights took over mid-response
                                        # (rollout.partial); None = all policy_version
    loss_weight: float = 1.0            # scales this response's share of the loss (strategies
                                        # that re-weight samples, e.g. a difficulty curriculum)
    advantages: list[float] | None = None  # per response token, the advantage computed in the
                                        # step that sampled it; kept for a later replay (RoRecomp)

    @property
    def flagged(self) -> bool:
        return bool(self.flags)

    @property
    def question(self) -> str:
        """The task's question as written, before a chat template rendered it into
        `prompt_text` (what judges and reward models should read)."""
        return self.metadata.get("question", self.prompt_text)

    def token_mask(self) -> list[int]:
        return self.loss_mask if self.loss_mask is not None else [1] * len(self.response_ids)


def groups_of(samples: list[Sample]) -> list[list[Sample]]:
    """Split samples into groups by `group_id`, keeping first-seen order."""
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.group_id, []).append(s)
    return list(groups.values())


def response_diversity(group: list[Sample]) -> float:
    """Share of distinct pairs among a group's response texts: the mean over pairs i < j of
    1[text_i != text_j]; 0.0 for fewer than two. [inferred] SCOPE reports a "diversity score"
    it does not define; this exact-match pairwise dissimilarity is the cheapest stand-in."""
    texts = [s.response_text for s in group]
    pairs = [(a, b) for i, a in enumerate(texts) for b in texts[i + 1:]]
    return sum(a != b for a, b in pairs) / len(pairs) if pairs else 0.0


@dataclass
class Batch:
    """Columnar, padded tensors for a list of samples.

    Layout matches what `generate` saw: prompts left-padded to a common length P, responses
    right-padded to a common length R, so `input_ids` is [B, P + R] and every response tensor
    is [B, R]. Position ids count only real tokens, as `generate` does with left padding.
    """

    input_ids: torch.Tensor         # [B, P+R] long
    attention_mask: torch.Tensor    # [B, P+R] long, 1 on real tokens
    position_ids: torch.Tensor      # [B, P+R] long
    response_mask: torch.Tensor     # [B, R] float, 1 on response tokens that are trained on
    behaviour_logprobs: torch.Tensor  # [B, R] float
    prompt_len: int                 # P
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. advantages [B, R]

    @classmethod
    def from_samples(cls, samples: list[Sample], pad_id: int) -> "Batch":
        if not samples:
            raise ValueError("cannot build a Batch from zero samples")
        P = max(len(s.prompt_ids) for s in samples)
        R = max(max(len(s.response_ids) for s in samples), 1)
        B = len(samples)
        input_ids = torch.full((B, P + R), pad_id, dtype=torch.long)
        attention = torch.zeros((B, P + R), dtype=torch.long)
        response_mask = torch.zeros((B, R))
        behaviour = torch.zeros((B, R))
        for i, s in enumerate(samples):
            p, r = len(s.prompt_ids), len(s.response_ids)
            input_ids[i, P - p:P] = torch.tensor(s.prompt_ids, dtype=torch.long)
            attention[i, P - p:P] = 1
            if r:
                input_ids[i, P:P + r] = torch.tensor(s.response_ids, dtype=torch.long)
                attention[i, P:P + r] = 1
                response_mask[i, :r] = torch.tensor(s.token_mask(), dtype=torch.float)
                behaviour[i, :r] = torch.tensor(s.behaviour_logprobs, dtype=torch.float)
        position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
        batch = cls(input_ids, attention, position_ids, response_mask, behaviour, P)
        if any(s.guided_mask for s in samples):
            guided = torch.zeros((B, R))
            for i, s in enumerate(samples):
                if s.guided_mask:
                    guided[i, :len(s.guided_mask)] = torch.tensor(s.guided_mask, dtype=torch.float)
            batch.extras["guided"] = guided
        return batch

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, index: slice | torch.Tensor) -> "Batch":
        """Rows `index` of every tensor (used to cut mini-, micro- and per-rank batches)."""
        return Batch(
            self.input_ids[index], self.attention_mask[index], self.position_ids[index],
            self.response_mask[index], self.behaviour_logprobs[index], self.prompt_len,
            {k: v[index] for k, v in self.extras.items()},
        )

    def trimmed(self) -> "Batch":
        """Drop response columns that are padding in every row (micro-batches run faster)."""
        real = self.attention_mask[:, self.prompt_len:].any(0).nonzero()
        r = int(real.max()) + 1 if len(real) else 1
        cut = self.prompt_len + r
        return Batch(
            self.input_ids[:, :cut], self.attention_mask[:, :cut], self.position_ids[:, :cut],
            self.response_mask[:, :r], self.behaviour_logprobs[:, :r], self.prompt_len,
            {k: (v[:, :r] if v.dim() == 2 else v) for k, v in self.extras.items()},
        )


@dataclass
class Prompt:
    """One prompt to roll out, with the reference answer its verifiers need."""

    prompt_id: str
    text: str
    answer: Any = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class SamplingParams:
    n: int = 1                  # responses per prompt (the group size G)
    temperature: float = 1.0    # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0              # 0 = no top-k cut
    max_new_tokens: int = 64    # response length limit, in tokens
    seed: int = 0               # sampling seed of this call (the scheduler derives it per step)


@dataclass
class Weights:
    """One published version of the policy's weights. `state` is the full state dict, or,
    under Ray, a future of it: inside this record it travels as a reference, so a worker
    fetches the tensors only when its own weights are of another version."""

    version: int                # learner steps behind these weights
    state: Any

    def fetch(self) -> dict:
        if isinstance(self.state, dict):
            return self.state
        import ray   # only a Ray future gets here
        return ray.get(self.state)
