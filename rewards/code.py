"""Reward for model-written code: the fraction of unit tests it passes in the sandbox."""
from __future__ import annotations

import re

from core.records import Sample
from core.registry import register
from rewards import sandbox

_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.S)


def extract_code(text: str) -> str:
    """The last fenced code block of a response, or the whole response when it has none."""
    blocks = _FENCE.findall(text)
    return blocks[-1] if blocks else text


@register("reward", "code_tests")
def code_tests(sample: Sample, wall_s: float = 10.0, cpu_s: int = 5, memory_mb: int = 512,
               partial: bool = True) -> float:
    """Run the response's code against the tests in `sample.answer` (a list of Python
    snippets that raise on failure, e.g. asserts). Reward: the fraction passed, or with
    partial=false 1.0 only when all pass. Set the source's timeout_s above wall_s."""
    if not isinstance(sample.answer, list) or not sample.answer:
        # a bare answer such as "632" would run as a statement and "pass": refuse, flagged
        raise ValueError("code_tests needs sample.answer to be a list of test snippets "
                         "(data=toy_code, or a file whose answer field holds a list)")
    tests = sample.answer
    limits = sandbox.Limits(wall_s=wall_s, cpu_s=cpu_s, memory_mb=memory_mb)
    result = sandbox.run(extract_code(sample.response_text), tests, limits)
    sample.metadata["sandbox_status"] = result.status
    return result.fraction if partial else float(all(result.passed))
