"""Rule-based verifiers: math answers (math-verify), exact matches, regex and format checks."""
from __future__ import annotations

import logging
import re

from core.records import Sample
from core.answers import extract_answer, last_boxed
from core.registry import register

# math-verify warns on every call that its own (signal-based, main-thread-only) timeout is
# off; the reward worker's timeout_s bounds these calls instead.
logging.getLogger("math_verify").setLevel(logging.ERROR)


@register("reward", "math_verify")
def math_verify(sample: Sample, extractor: str | None = None, float_rounding: int = 6) -> float:
    """1.0 when the response's final answer is mathematically equal to `sample.answer`
    (numbers, fractions, expressions, sets, intervals), by Hugging Face math-verify; else 0.0.
    `extractor`: the answer format the response states its answer in (core/answers.py: boxed,
    hashes, last_number, regex:..., a task's own; set it to ${data.answer_format}); a response
    stating no answer scores 0.0. null: math-verify reads the whole response (a \\boxed{}
    answer, else the last expression)."""
    from math_verify import parse, verify
    text = sample.response_text
    if extractor is not None:
        answer = extract_answer(text, extractor)
        if answer is None:
            return 0.0
        text = _as_latex(answer)
    gold = parse(_as_latex(str(sample.answer)), parsing_timeout=None)
    pred = parse(text, parsing_timeout=None)
    if not gold or not pred:
        return 0.0
    return float(verify(gold, pred, float_rounding=float_rounding, timeout_seconds=None))


def _as_latex(answer: str) -> str:
    """A bare gold answer is read as math ("$...$") so "1/2" and "\\{1,2\\}" parse."""
    return answer if "$" in answer or "\\boxed" in answer else f"${answer}$"


def _normalise(text: str) -> str:
    return " ".join(text.strip().lower().split()).rstrip(".")


@register("reward", "exact_match")
def exact_match(sample: Sample, normalise: bool = True, boxed: bool = False) -> float:
    """1.0 when the response (or its last \\boxed{} with boxed=true) equals the answer;
    `normalise` ignores case, surrounding and repeated whitespace and a final period."""
    text = last_boxed(sample.response_text) if boxed else sample.response_text
    if text is None:
        return 0.0
    a, b = str(text), str(sample.answer)
    return float(_normalise(a) == _normalise(b) if normalise else a == b)


@register("reward", "regex_match")
def regex_match(sample: Sample, pattern: str, group: int | None = None) -> float:
    """With `group`: 1.0 when that capture group of the first match equals the answer.
    Without: 1.0 when `pattern` occurs in the response."""
    match = re.search(pattern, sample.response_text, re.S)
    if match is None:
        return 0.0
    if group is None:
        return 1.0
    return float(_normalise(match.group(group)) == _normalise(str(sample.answer)))


@register("reward", "format_check")
def format_check(sample: Sample, pattern: str = r"<think>.*</think>.*\\boxed\{.*\}.*") -> float:
    """1.0 when the whole response matches `pattern` (default: a <think> block followed by a
    \\boxed{} answer), else 0.0. A format reward, usually with a small weight."""
    return float(re.fullmatch(pattern, sample.response_text.strip(), re.S) is not None)
