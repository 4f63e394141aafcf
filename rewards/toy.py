"""Rewards for the toy addition task (tasks/toy_arith.py)."""
from __future__ import annotations

from core.records import Sample
from core.registry import register
from tasks.toy_arith import STEP_END, check_steps, extract_answer, without_rechecks


@register("reward", "toy_exact")
def toy_exact(sample: Sample) -> float:
    """1.0 when the number after the last '#' equals the true sum, else 0.0."""
    return 1.0 if extract_answer(sample.response_text) == sample.answer else 0.0


@register("reward", "toy_steps")
def toy_steps(sample: Sample) -> float:
    """Fraction of the true scratchpad steps written correctly, in order (0.0 to 1.0);
    re-checks (a step written again) neither add nor cost."""
    verdicts = check_steps(sample.question, without_rechecks(sample.response_text))
    truth = sample.question.rstrip("=").split("+")
    columns = max(len(x) for x in truth)
    return sum(verdicts[:columns]) / columns if verdicts else 0.0


@register("reward", "toy_step_errors")
def toy_step_errors(sample: Sample) -> list[float]:
    """Per step of `sample.steps` (rollout.step_delimiter=";"): 1.0 if the step is wrong.

    The oracle critic for the toy task, standing in for a generative PRM's step critique
    (CAPO): column steps are checked against the true scratchpad, the final "#answer"
    segment against the true sum.
    """
    verdicts = check_steps(sample.question, sample.response_text)
    out, column = [], 0
    for step in sample.steps or []:
        if step.endswith(STEP_END):
            right = column < len(verdicts) and verdicts[column]
            column += 1
        else:
            right = extract_answer(step) == sample.answer
        out.append(0.0 if right else 1.0)
    return out


@register("reward", "toy_flawed")
def toy_flawed(sample: Sample) -> float:
    """1.0 for a flawed positive (FAPO): the right answer reached through a wrong step."""
    if extract_answer(sample.response_text) != sample.answer:
        return 0.0
    return 0.0 if all(check_steps(sample.question, sample.response_text)) else 1.0


@register("reward", "toy_hardness")
def toy_hardness(sample: Sample) -> float:
    """Data hardness delta for GRPO-S: 1 - the fraction of scratchpad steps that match the
    worked solution (the toy stand-in for 1 - similarity to a demonstration)."""
    return 1.0 - toy_steps(sample)


@register("reward", "toy_step_correct")
def toy_step_correct(sample: Sample) -> list[float]:
    """Per step: 1.0 if right, 0.0 if wrong (an oracle process reward, e.g. for ReNorm)."""
    return [1.0 - e for e in toy_step_errors(sample)]


# These read the toy scratchpad's structure: on another task's data they fail or mean nothing,
# so config validation refuses them unless data.source is toy.
for _fn in (toy_exact, toy_steps, toy_step_errors, toy_flawed, toy_hardness, toy_step_correct):
    _fn.data_sources = ("toy",)
