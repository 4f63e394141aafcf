"""Reward shaping that depends only on the response itself."""
from __future__ import annotations

import math

from core.records import Sample
from core.registry import register


@register("reward", "dapo_overlong")
def dapo_overlong(sample: Sample, max_len: int, buffer_len: int, factor: float = 1.0) -> float:
    """DAPO soft overlong penalty (arXiv:2503.14476), with L_exp = max_len - buffer_len:
    0 up to L_exp tokens, then falling linearly to -factor at max_len (and -factor beyond).
    DAPO: max_len 20480, buffer_len 4096, factor 1.0."""
    expected = max_len - buffer_len
    length = len(sample.response_ids)
    return max(min(-(length - expected) / buffer_len * factor, 0.0), -factor)


def par_shape(score: float, reference_scores: list[float], k: float = 1.0) -> float:
    """PAR (arXiv:2502.18770): mean over references of sigmoid(k (r - r_ref)), in (0, 1)."""
    return sum(1 / (1 + math.exp(-k * (score - ref))) for ref in reference_scores) / len(reference_scores)


@register("reward", "par")
def par(sample: Sample, score_source: str, k: float = 1.0,
        reference_field: str = "reference_scores") -> float:
    """Preference As Reward: the `score_source` reward-model score shaped against the RM
    scores of reference responses, precomputed in `sample.metadata[reference_field]`
    (PAR: k = 1, M = 10 references; M = 1 is nearly as good). List it after its source."""
    refs = sample.metadata.get(reference_field)
    if not refs:
        raise ValueError(f"PAR needs metadata[{reference_field!r}]: RM scores of reference responses")
    return par_shape(sample.rewards[score_source], list(refs), k)


@register("reward", "par_group")
def par_group(samples: list[Sample], score_source: str, k: float = 1.0) -> list[float]:
    """PAR with the other responses of the group as references (scope "group"). [inferred]
    An online stand-in for PAR's precomputed SFT references when a dataset has none: it keeps
    the bounded, saturating shape, but the references move with the policy. A group of one
    scores 0.5."""
    scores = [s.rewards[score_source] for s in samples]
    return [par_shape(x, scores[:i] + scores[i + 1:], k) if len(scores) > 1 else 0.5
            for i, x in enumerate(scores)]


@register("reward", "length_penalty")
def length_penalty(sample: Sample, free_tokens: int = 300, per_token: float = 0.01) -> float:
    """-per_token for every response token beyond free_tokens (PAR's default: 300, 0.01)."""
    return -per_token * max(len(sample.response_ids) - free_tokens, 0)


def crf(outcome: float, conciseness: float, alpha: float = 0.5, anneal: float = 1.0,
        difficulty: float = 0.0) -> float:
    """CRF (arXiv:2511.09158): R = R_o * (1 + alpha * c * (s + d_q)); zero for wrong answers."""
    return outcome * (1 + alpha * conciseness * (anneal + difficulty))


def gated_accumulation(levels: list[float | list[float]], gate: float = 0.0) -> float:
    """G-RA (arXiv:2508.10548): rewards by priority, highest first (an outcome, a format
    check, ..., then a list of step rewards). Each level counts only while every scalar
    level above it is over `gate`."""
    total = 0.0
    for level in levels:
        if isinstance(level, list):
            total += sum(level)
            continue
        total += level
        if level <= gate:
            break
    return total


def renorm(process: list[float], outcome: float, mu: float = 1.0) -> list[float]:
    """ReNorm (arXiv:2509.25598): step reward r_p + r_o - mu, so its sign follows the outcome."""
    return [p + outcome - mu for p in process]


# --- the shaping functions above as reward sources over other sources' scores ---------------
# (list them after the sources they read; the reward worker runs sources in order)


@register("reward", "toy_conciseness")
def toy_conciseness(sample: Sample) -> float:
    """A conciseness score in (0, 1] for the toy task, standing in for CRF's trained CRM:
    the worked solution's length over the response's (1 = no longer than needed)."""
    solution = sample.metadata.get("solution") or sample.response_text
    return min(1.0, len(solution) / max(len(sample.response_text), 1))


@register("reward", "crf_shaped")
def crf_shaped(sample: Sample, outcome_source: str = "correct", conciseness_source: str = "concise",
               alpha: float = 0.5, anneal: float = 1.0, difficulty: float = 0.0) -> float:
    """CRF on two earlier sources: outcome * (1 + alpha * conciseness * (anneal + d_q))."""
    return crf(sample.rewards[outcome_source], sample.rewards[conciseness_source], alpha,
               anneal, difficulty)


@register("reward", "gated_reward")
def gated_reward(sample: Sample, levels: list[str], step_source: str | None = None,
                 gate: float = 0.0) -> float:
    """G-RA over earlier sources: `levels` (source names, highest priority first), then the
    steps of `step_source`, each counted only while every level above is over `gate`."""
    values: list = [sample.rewards[name] for name in levels]
    if step_source:
        values.append(list(sample.step_scores.get(step_source, [])))
    return gated_accumulation(values, gate)


@register("reward", "renorm_steps")
def renorm_steps(sample: Sample, process_source: str, outcome_source: str = "correct",
                 mu: float = 1.0) -> list[float]:
    """ReNorm step rewards (granularity: step) from an earlier step source and the outcome."""
    return renorm(sample.step_scores[process_source], sample.rewards[outcome_source], mu)
