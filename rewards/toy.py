"""Rewards for the toy addition task (tasks/toy_arith.py)."""
from __future__ import annotations

from core.records import Sample
from core.registry import register
from tasks.toy_arith import check_steps, extract_answer


@register("reward", "toy_exact")
def toy_exact(sample: Sample) -> float:
    """1.0 when the number after the last '#' equals the true sum, else 0.0."""
    return 1.0 if extract_answer(sample.response_text) == sample.answer else 0.0


@register("reward", "toy_steps")
def toy_steps(sample: Sample) -> float:
    """Fraction of the true scratchpad steps written correctly, in order (0.0 to 1.0)."""
    verdicts = check_steps(sample.prompt_text, sample.response_text)
    truth = sample.prompt_text.rstrip("=").split("+")
    columns = max(len(x) for x in truth)
    return sum(verdicts[:columns]) / columns if verdicts else 0.0
