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


PREFIXES = ("none", "prompt")


def program_of(sample: Sample, prefix: str = "none") -> str:
    """The program `code_tests` runs. prefix="none": the response's code. prefix="prompt":
    the problem's prompt code (sample.metadata["code_prefix"], e.g. a HumanEval signature,
    docstring and helpers) followed by the response: a raw response continues it directly, as
    a completion of the function body; a fenced block is appended after it on its own lines,
    so a block that redefines the whole function wins over the prompt's."""
    if prefix not in PREFIXES:
        raise ValueError(f"code_tests: prefix must be one of {PREFIXES}, got {prefix!r} "
                         "(reward source kwargs.prefix)")
    code = extract_code(sample.response_text)
    if prefix == "none":
        return code
    code_prefix = sample.metadata.get("code_prefix")
    if not isinstance(code_prefix, str) or not code_prefix.strip():
        raise ValueError("code_tests with prefix=prompt needs the problem's prompt code in "
                         "sample.metadata['code_prefix'] (tasks/humaneval.py sets it); this "
                         "sample has none. Use prefix=none for tasks whose responses are "
                         "whole programs")
    if _FENCE.search(sample.response_text):
        return code_prefix + "\n" + code
    return code_prefix + sample.response_text


@register("reward", "code_tests")
def code_tests(sample: Sample, wall_s: float = 10.0, cpu_s: int = 5, memory_mb: int = 512,
               partial: bool = True, allow_unisolated: bool = False,
               prefix: str = "none", share_repeats: bool = True) -> float:
    """Run the response's code against the tests in `sample.answer`: a list of assert
    strings ("assert f(9) == 92") or of stdin/stdout pairs ({"input": ..., "output": ...}),
    judged outside the program (rewards/code_checks.py). Reward: the fraction passed, or
    with partial=false 1.0 only when all pass. Set the source's timeout_s above wall_s (for
    stdin/stdout tests, above wall_s x the number of tests). allow_unisolated=true runs the
    code even where the sandbox cannot isolate it (no root, no user namespaces): resource
    limits only, so the program can read and write what your user can. prefix=prompt runs
    the problem's prompt code (sample.metadata["code_prefix"]) before the response, for tasks
    whose responses complete a given function, as HumanEval's do (see `program_of`); a
    sample without code_prefix is then refused, flagged. prefix=none runs the response alone.
    share_repeats=true: a program identical to one being judged or judged lately (with the same
    tests) takes that verdict instead of running again (rewards/sandbox.py SharedRuns)."""
    if not isinstance(sample.answer, list) or not sample.answer:
        # a bare answer such as "632" is no test at all: refuse, flagged
        raise ValueError("code_tests needs sample.answer to be a list of tests: assert strings "
                         "or {'input', 'output'} dicts (data=toy_code, or a file whose answer "
                         "field holds such a list)")
    program = program_of(sample, prefix)
    limits = sandbox.Limits(wall_s=wall_s, cpu_s=cpu_s, memory_mb=memory_mb)
    result = sandbox.run(program, sample.answer, limits, allow_unisolated, share_repeats)
    sample.metadata["sandbox_status"] = result.status
    sample.metadata["sandbox_failure"] = next((why for why in result.reasons if why), "")
    return result.fraction if partial else float(all(result.passed))


code_tests.runs_model_code = True   # config validation checks the sandbox can isolate it
