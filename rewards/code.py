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
               partial: bool = True, allow_unisolated: bool = False) -> float:
    """Run the response's code against the tests in `sample.answer`: a list of assert
    strings ("assert f(9) == 92") or of stdin/stdout pairs ({"input": ..., "output": ...}),
    judged outside the program (rewards/code_checks.py). Reward: the fraction passed, or
    with partial=false 1.0 only when all pass. Set the source's timeout_s above wall_s (for
    stdin/stdout tests, above wall_s x the number of tests). allow_unisolated=true runs the
    code even where the sandbox cannot isolate it (no root, no user namespaces): resource
    limits only, so the program can read and write what your user can."""
    if not isinstance(sample.answer, list) or not sample.answer:
        # a bare answer such as "632" is no test at all: refuse, flagged
        raise ValueError("code_tests needs sample.answer to be a list of tests: assert strings "
                         "or {'input', 'output'} dicts (data=toy_code, or a file whose answer "
                         "field holds such a list)")
    limits = sandbox.Limits(wall_s=wall_s, cpu_s=cpu_s, memory_mb=memory_mb)
    result = sandbox.run(extract_code(sample.response_text), sample.answer, limits,
                         allow_unisolated)
    sample.metadata["sandbox_status"] = result.status
    sample.metadata["sandbox_failure"] = next((why for why in result.reasons if why), "")
    return result.fraction if partial else float(all(result.passed))


code_tests.runs_model_code = True   # config validation checks the sandbox can isolate it
