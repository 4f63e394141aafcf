"""Label-free and self-rewarding methods: majority vote (TTRL), EVOL-RL, Co-Reward,
self-certainty, RLPR, LaSeR and the constrained-RLHF Lagrange state.

Everything is a small pure function tested against the worked examples of
shared/methods/rewards.md (sections 1-5 and 8). The reward sources registered here are:
  majority_vote (scope "group"), evol_rl (scope "group"), co_reward (every sample of a batch).
The policy-coupled pieces (RLPR, LaSeR, self-certainty) take log-probs or logits the actor
computed with the rollout's weights; the stateful ones (`StdFilter`, `LagrangeMultipliers`)
have `state_dict`/`load_state_dict` so the trainer checkpoints them.
The reward sources that need the policy itself are in rewards/policy_rewards.py.
"""
from __future__ import annotations

import copy
import math
import re
import zlib
from collections import Counter
from typing import Any, Hashable, Sequence

import torch

from core.records import Sample
from core.registry import lookup, register
from core.answers import extract_answer

# --- answer extraction ----------------------------------------------------------------------


def answer_of(sample: Sample, extractor: str) -> str | None:
    """The sample's final answer as a string, or None when empty or unparseable.
    `extractor`: an answer format of core/answers.py (the task's data.answer_format)."""
    return extract_answer(sample.response_text, extractor)


# --- TTRL majority vote (arXiv:2504.16084) ---------------------------------------------------


def majority_answer(answers: Sequence[Hashable | None]) -> Any:
    """Most frequent answer, None and "" ignored; ties go to the one seen first. None if none."""
    counts: dict[Any, int] = {}
    for a in answers:
        if a is not None and a != "":
            counts[a] = counts.get(a, 0) + 1
    # dicts keep first-occurrence order and max() keeps the first maximum: ties -> first seen.
    return max(counts, key=counts.__getitem__) if counts else None


@register("reward", "majority_vote")
def majority_vote(samples: list[Sample], extractor: str) -> list[float]:
    """TTRL pseudo-label reward, scope "group": 1.0 when the answer equals the group's
    majority answer, else 0.0 (no answer -> 0.0)."""
    answers = [answer_of(s, extractor) for s in samples]
    label = majority_answer(answers)
    return [1.0 if a is not None and a == label else 0.0 for a in answers]


# --- EVOL-RL (arXiv:2509.15194) --------------------------------------------------------------


def evol_rewards(labels: list[int], similarity: list[list[float]],
                 valid: list[bool] | None = None, alpha: float = 0.5) -> list[float]:
    """EVOL-RL novelty rewards for one group (EVOL-RL: alpha = 0.5).

    labels[i] is 1 when response i matches the majority answer; similarity is the n x n
    cosine matrix clipped to [0, 1]. Invalid responses get -1 and are left out of every
    similarity. For valid i: s̄ = mean similarity to the others of its own class (correct or
    incorrect; all others when it is alone), m = max similarity to all others, novelty
    u = 1 - (alpha s̄ + (1 - alpha) m). u is min-max normalised within each class; correct
    -> 0.5 + 0.5 û in [0.5, 1], incorrect -> -1 + 0.5 û in [-1, -0.5]. A class whose u are
    all equal gets 0.75 / -0.75; a class of one gets 1.0 / -0.5. (The authors' code gives -1
    to a lone valid response when all the others are invalid; we keep the class-of-one rule.)
    """
    n = len(labels)
    valid = [True] * n if valid is None else list(valid)
    kept = [i for i in range(n) if valid[i]]
    classes = {True: [i for i in kept if labels[i]], False: [i for i in kept if not labels[i]]}
    novelty: dict[int, float] = {}
    for i in kept:
        others = [j for j in kept if j != i]
        if not others:
            continue                       # alone: the class-of-one rule decides
        same = [j for j in classes[bool(labels[i])] if j != i] or others
        mean_sim = sum(similarity[i][j] for j in same) / len(same)
        max_sim = max(similarity[i][j] for j in others)
        novelty[i] = 1.0 - (alpha * mean_sim + (1 - alpha) * max_sim)
    rewards = [-1.0] * n
    for correct, members in classes.items():
        low = 0.5 if correct else -1.0     # band [low, low + 0.5]
        if len(members) == 1:
            rewards[members[0]] = low + 0.5
            continue
        if not members:
            continue
        u = [novelty[i] for i in members]
        lo, hi = min(u), max(u)
        for i, ui in zip(members, u):
            # a float-noise spread is a tie, not a full 0.5 swing
            rewards[i] = low + 0.5 * (ui - lo) / (hi - lo) if hi - lo > 1e-9 else low + 0.25
    return rewards


def text_after_think(text: str) -> str:
    """What follows the last </think>, or the whole text when there is none."""
    return text.rsplit("</think>", 1)[1] if "</think>" in text else text


def char_ngram_embedding(text: str, n: int = 3, dim: int = 512) -> list[float]:
    """Offline stand-in for an embedding model: counts of character n-grams hashed into
    `dim` buckets (zlib.crc32, so identical across processes), L2-normalised. Text shorter
    than n is one gram; empty text is the zero vector."""
    grams = [text[i:i + n] for i in range(len(text) - n + 1)] or ([text] if text else [])
    vec = [0.0] * dim
    for g in grams:
        vec[zlib.crc32(g.encode("utf-8")) % dim] += 1.0
    norm = math.sqrt(sum(v * v for v in vec))
    return [v / norm for v in vec] if norm > 0 else vec


@register("embedder", "char_ngram")
def char_ngram_embed(texts: list[str], n: int = 3, dim: int = 512) -> list[list[float]]:
    return [char_ngram_embedding(t, n, dim) for t in texts]


def cosine_similarity_matrix(embeddings: list[list[float]]) -> list[list[float]]:
    """Pairwise cosine similarities clipped to [0, 1]; a zero vector is similar to nothing."""
    if not embeddings:
        return []
    x = torch.as_tensor(embeddings, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (x @ x.T).clamp(0.0, 1.0).tolist()


def has_boxed_digit(text: str) -> bool:
    """EVOL-RL's validity gate: some \\boxed{...} contains a digit."""
    return re.search(r"\\boxed\{[^}]*\d", text) is not None


@register("reward", "evol_rl")
def evol_rl(samples: list[Sample], extractor: str, embedder: str = "char_ngram",
            require_boxed_digit: bool = False, alpha: float = 0.5) -> list[float]:
    """EVOL-RL reward, scope "group": majority-vote selection plus novelty of the text after
    </think> (see `evol_rewards`). A response with no answer is invalid (-1); with
    `require_boxed_digit` so is one whose text after </think> has no \\boxed{} holding a
    digit (the paper's gate). `embedder` is "char_ngram" (offline default) or a dotted path
    to fn(list[str]) -> list[list[float]], e.g. a client of an embedding server (the paper
    uses Qwen3-Embedding-4B). The paper votes over 64 responses and trains on 32; here
    every sample of the group votes and is scored."""
    answers = [answer_of(s, extractor) for s in samples]
    label = majority_answer(answers)
    labels = [int(a is not None and a == label) for a in answers]
    texts = [text_after_think(s.response_text) for s in samples]
    valid = [a is not None and (not require_boxed_digit or has_boxed_digit(t))
             for a, t in zip(answers, texts)]
    kept = [i for i, v in enumerate(valid) if v]
    embed = lookup("embedder", embedder)
    sims = cosine_similarity_matrix(embed([texts[i] for i in kept])) if kept else []
    n = len(samples)
    similarity = [[0.0] * n for _ in range(n)]     # invalid rows are never read
    for a, i in enumerate(kept):
        for b, j in enumerate(kept):
            similarity[i][j] = sims[a][b]
    return evol_rewards(labels, similarity, valid, alpha)


# --- Co-Reward / Co-rewarding-I (arXiv:2508.00410) -------------------------------------------


def co_reward_labels(original_answers: Sequence[Hashable | None],
                     twin_answers: Sequence[Hashable | None]) -> tuple[list[float], list[float]]:
    """Cross-view rewards: a response to the original question scores 1 when its answer is
    the majority answer of the rephrased group, and vice versa; no pseudo-label -> all 0."""
    def score(answers, pseudo):
        return [1.0 if pseudo is not None and a == pseudo else 0.0 for a in answers]
    return (score(original_answers, majority_answer(twin_answers)),
            score(twin_answers, majority_answer(original_answers)))


@register("reward", "co_reward")
def co_reward(samples: list[Sample], extractor: str) -> list[float]:
    """Co-Reward over every sample of a batch (it needs both views of a question at once).

    The two views of one question share `metadata["pair"]` and have `metadata["view"]`
    0 (original) or 1 (rephrased). A sample with no pair, an unknown view, or whose twin
    view is not in the batch gets 0.0."""
    answers = [answer_of(s, extractor) for s in samples]
    views: dict[str, dict[int, list[int]]] = {}
    for i, s in enumerate(samples):
        pair, view = s.metadata.get("pair"), s.metadata.get("view")
        if pair is not None and view in (0, 1):
            views.setdefault(pair, {0: [], 1: []})[view].append(i)
    rewards = [0.0] * len(samples)
    for split in views.values():
        if not split[0] or not split[1]:
            continue
        orig, twin = co_reward_labels([answers[i] for i in split[0]], [answers[i] for i in split[1]])
        for i, r in zip(split[0] + split[1], orig + twin):
            rewards[i] = r
    return rewards


# --- Self-certainty (arXiv:2502.18581; Intuitor) ---------------------------------------------


@torch.no_grad()
def self_certainty_from_logits(logits: torch.Tensor, mask: torch.Tensor | None = None,
                               chunk_rows: int = 1024) -> float:
    """Self-certainty of one response: masked mean over tokens of KL(U || p_i), computed as
    logsumexp(z_i) - mean_j z_ij - log V (Intuitor's identity, no softmax materialised).
    logits: [n, V]; mask: [n], 1 on response tokens. Uniform -> 0. Rows are processed in
    chunks so the float64 copy stays small. No masked-in token -> 0.0."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be [n, V], got shape {tuple(logits.shape)}")
    n, vocab = logits.shape
    per_token = torch.empty(n, dtype=torch.float64, device=logits.device)
    for start in range(0, n, chunk_rows):
        z = logits[start:start + chunk_rows].double()
        per_token[start:start + chunk_rows] = torch.logsumexp(z, dim=-1) - z.mean(dim=-1)
    per_token -= math.log(vocab)
    weights = torch.ones_like(per_token) if mask is None else mask.to(per_token)
    total = weights.sum()
    return float((per_token * weights).sum() / total) if total > 0 else 0.0


def borda_votes(scores: Sequence[float], answers: Sequence[Hashable | None],
                power: float = 0.5) -> dict[Any, float]:
    """Borda votes per answer: responses sorted by self-certainty, highest first; rank r of
    N gets (N - r + 1)^power. Unextractable answers (None, "") get no votes, but keep their
    rank. Answers are compared exactly, so normalise them first. Keys in rank order of
    each answer's best response (self-certainty script: power 0.5; power 0 = majority)."""
    n = len(scores)
    order = sorted(range(n), key=lambda i: -scores[i])    # stable: equal scores keep input order
    votes: dict[Any, float] = {}
    for rank, i in enumerate(order, start=1):
        if answers[i] is not None and answers[i] != "":
            votes[answers[i]] = votes.get(answers[i], 0.0) + (n - rank + 1) ** power
    return votes


def borda_vote(scores: Sequence[float], answers: Sequence[Hashable | None],
               power: float = 0.5) -> Any:
    """The answer with the most Borda votes (ties: the one with the more certain best
    response), or None when nothing was extractable."""
    votes = borda_votes(scores, answers, power)
    return max(votes, key=votes.__getitem__) if votes else None


# --- RLPR (arXiv:2506.18254) -----------------------------------------------------------------

RLPR_SCORE_MODES = ("mean_exp_log_softmax", "mean_log_softmax", "exp_sum_log_softmax",
                    "exp_mean_log_softmax")


def rlpr_score(token_logprobs: Sequence[float] | torch.Tensor,
               mode: str = "mean_exp_log_softmax") -> float:
    """Score of the reference-answer tokens from their log-probs. RLPR's default is the mean
    token probability; the others are ablations: mean log-prob, product of probs, geometric
    mean prob. No tokens -> 0.0, as in the authors' code."""
    lp = torch.as_tensor(token_logprobs, dtype=torch.float64).flatten()
    if lp.numel() == 0:
        return 0.0
    if mode == "mean_exp_log_softmax":
        return float(lp.exp().mean())
    if mode == "mean_log_softmax":
        return float(lp.mean())
    if mode == "exp_sum_log_softmax":
        return float(lp.sum().exp())
    if mode == "exp_mean_log_softmax":
        return float(lp.mean().exp())
    raise ValueError(f"unknown RLPR score mode {mode!r}; one of {', '.join(RLPR_SCORE_MODES)}")


def rlpr_reward(score_b: float, score_a: float, format_ok: bool, format_coef: float = 0.1) -> float:
    """RLPR reward: Δ = scoreB - scoreA clipped below at 0 (shaping threshold_0), then
    (1 - c_f) Δ + c_f format; with c_f == -1, Δ if the format is valid else -1 (RLPR: 0.1)."""
    delta = max(score_b - score_a, 0.0)
    if format_coef == -1:
        return delta if format_ok else -1.0
    return (1 - format_coef) * delta + format_coef * float(format_ok)


def rlpr_format_ok(text: str, think: bool = True) -> bool:
    """RLPR's format: exactly one each of <think>, </think>, <answer>, </answer>, in order
    (only the answer tags when `think` is False)."""
    tags = ["<think>", "</think>", "<answer>", "</answer>"] if think else ["<answer>", "</answer>"]
    if any(text.count(t) != 1 for t in tags):
        return False
    positions = [text.index(t) for t in tags]
    return positions == sorted(positions)


def repetition_penalty(text: str, window: int = 10, times: int = 10) -> float:
    """-1.0 when some `window`-word window occurs `times` times or more, else 0.0. Words are
    split on whitespace and '_' (RLPR script: window 10, 10 repeats)."""
    words = [w for chunk in text.split() for w in chunk.split("_")]
    if len(words) <= window:
        return 0.0
    counts = Counter(tuple(words[i:i + window]) for i in range(len(words) - window + 1))
    return -1.0 if max(counts.values()) >= times else 0.0


def rlpr_splice(response_text: str, reference: str, open_tag: str = "<answer>",
                close_tag: str = "</answer>") -> tuple[str, str, str]:
    """Split the RLPR scoring sequence into (prefix, target, suffix); target = reference.

    prefix keeps the response verbatim up to its last open tag (the whole response when it
    has none), then the tag and the whitespace that opened the model's own answer (a single
    space when it had none or nothing follows the tag). suffix = " " + close tag; the caller
    appends EOS. scoreB reads the log-probs of the target tokens only."""
    head, tag, answer = response_text.rpartition(open_tag)
    if not tag:
        return response_text + open_tag + " ", reference, " " + close_tag
    lead = answer[:len(answer) - len(answer.lstrip(" \n\t\r"))]
    if not lead or not answer.strip():
        lead = " "
    return head + open_tag + lead, reference, " " + close_tag


def reward_std(values: Sequence[float]) -> float:
    """The spread the std filter measures: the unbiased std (0 for fewer than two values)."""
    return _unbiased_std(values)


def _unbiased_std(values: Sequence[float]) -> float:
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


class StdFilter:
    """RLPR's std filter (filter_mode EMA): drop prompts whose reward spread is small.

    `update(step, group_rewards)` is called once at the end of each step with every group
    sampled in it. From `ema_start_step` the mean per-prompt std of each step is recorded;
    at the step before `filter_start_step` the EMA starts as the mean of those step means,
    and each later step moves it: EMA <- ema_ratio EMA + (1 - ema_ratio) step_mean.
    `keep(group_rewards, step)` keeps every prompt before `filter_start_step`, then only
    those with unbiased std >= beta EMA (a lone response has std 0).
    RLPR: beta 0.5, ema_ratio 0.99, EMA start step 6, filter start step 11."""

    def __init__(self, beta: float = 0.5, ema_ratio: float = 0.99, ema_start_step: int = 6,
                 filter_start_step: int = 11):
        self.beta, self.ema_ratio = beta, ema_ratio
        self.ema_start_step, self.filter_start_step = ema_start_step, filter_start_step
        self.ema: float | None = None
        self.history: list[float] = []       # step means collected before the EMA starts

    def threshold(self, step: int) -> float | None:
        if step < self.filter_start_step or self.ema is None:
            return None
        return self.beta * self.ema

    def keep(self, group_rewards: list[list[float]], step: int) -> list[bool]:
        cut = self.threshold(step)
        return [cut is None or _unbiased_std(g) >= cut for g in group_rewards]

    def update(self, step: int, group_rewards: list[list[float]]) -> None:
        if step < self.ema_start_step:
            return
        stds = [s for s in (_unbiased_std(g) for g in group_rewards if len(g) > 1) if math.isfinite(s)]
        if not stds:
            return
        step_mean = sum(stds) / len(stds)
        if self.ema is not None:
            self.ema = self.ema_ratio * self.ema + (1 - self.ema_ratio) * step_mean
            return
        self.history.append(step_mean)
        if step + 1 >= self.filter_start_step:    # next step filters: start the EMA
            self.ema = sum(self.history) / len(self.history)

    def state_dict(self) -> dict:
        return {"ema": self.ema, "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.ema = state["ema"]
        self.history = list(state["history"])


# --- Constrained RLHF (arXiv:2310.04373) ------------------------------------------------------


class LagrangeMultipliers:
    """Lagrange multipliers of constrained RLHF with composite reward models.

    One raw λ̃_i per constraint (initialised N(0, init_std)), squashed to λ_i = σ(λ̃_i) for
    inequality and tanh(λ̃_i) for equality constraints. `update` takes one SGD step on
    L = Σ λ_i (mean return_i - θ_i) with gradient-norm clipping at 1, so λ_i grows while its
    constraint is unmet and shrinks once it is exceeded (paper: SGD lr 0.1, momentum 0.1)."""

    def __init__(self, thresholds: dict[str, float], kind: str = "inequality", lr: float = 0.1,
                 momentum: float = 0.1, init_std: float = 0.01, seed: int = 0):
        if kind not in ("inequality", "equality"):
            raise ValueError(f"kind must be 'inequality' or 'equality', got {kind!r}")
        if not thresholds:
            raise ValueError("need at least one constraint threshold")
        self.names = list(thresholds)
        self.thresholds = dict(thresholds)
        self.kind = kind
        gen = torch.Generator().manual_seed(seed)
        init = torch.randn(len(self.names), generator=gen, dtype=torch.float64) * init_std
        self.raw = torch.nn.Parameter(init)
        self.optimizer = torch.optim.SGD([self.raw], lr=lr, momentum=momentum)

    def _squash(self, raw: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(raw) if self.kind == "inequality" else torch.tanh(raw)

    def values(self) -> dict[str, float]:
        with torch.no_grad():
            return dict(zip(self.names, self._squash(self.raw).tolist()))

    def update(self, mean_returns: dict[str, float]) -> float:
        """One multiplier step from each component's mean episodic return; returns L."""
        gaps = torch.tensor([mean_returns[n] - self.thresholds[n] for n in self.names],
                            dtype=self.raw.dtype)
        self.optimizer.zero_grad()
        loss = (self._squash(self.raw) * gaps).sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([self.raw], max_norm=1.0)
        self.optimizer.step()
        return float(loss.detach())

    def mix(self, kl_advantage, component_advantages: dict[str, Any]):
        """A = (N - Σλ_i) A_KL + Σ λ_i A_i, per token or response. Lists in, list out;
        tensors in, tensor out."""
        lam = self.values()
        missing = [n for n in self.names if n not in component_advantages]
        if missing:
            raise KeyError(f"no advantages for constraints {missing}")
        as_list = not isinstance(kl_advantage, torch.Tensor)
        as_f64 = lambda x: torch.as_tensor(x, dtype=torch.float64)  # noqa: E731
        mixed = (len(self.names) - sum(lam.values())) * as_f64(kl_advantage)
        for name in self.names:
            mixed = mixed + lam[name] * as_f64(component_advantages[name])
        return mixed.tolist() if as_list else mixed.to(kl_advantage.dtype)

    def state_dict(self) -> dict:
        # deep copy: the optimizer's momentum buffers are live tensors updated in place
        return {"names": list(self.names), "raw": self.raw.detach().clone(),
                "optimizer": copy.deepcopy(self.optimizer.state_dict())}

    def load_state_dict(self, state: dict) -> None:
        if list(state["names"]) != self.names:
            raise ValueError(f"constraints differ: saved {state['names']}, here {self.names}")
        with torch.no_grad():
            self.raw.copy_(state["raw"])
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
