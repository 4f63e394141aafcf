"""Answer extraction: the final answer a response states, read by one named format.

A task says how its responses state their answer (`data.answer_format`); verifiers and
label-free rewards (majority vote, Co-Reward, EVOL-RL, certainty vote) all read it through
`extract_answer(text, answer_format)`, so one setting changes them together. Formats:

    boxed         the last \\boxed{...} (balanced braces)            "... \\boxed{3/4}"  -> "3/4"
    hashes        the text after the last "####" (GSM8K), commas out  "... #### 1,234"   -> "1234"
    last_number   the last integer / decimal / fraction in the text   "so x = -2.5."      -> "-2.5"
    regex:<re>    group 1 (or the whole match) of the last match of <re>
    <name>        an extractor a task registered (`register("extractor", name)`, e.g. "toy")
    <dotted.path> a function text -> answer

Every extractor returns the answer as a stripped string, or None when the response states none.
"""
from __future__ import annotations

import re
from typing import Callable

from core.registry import lookup, register

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} (balanced braces), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
    return None


@register("extractor", "boxed")
def boxed_answer(text: str) -> str | None:
    return last_boxed(text)


@register("extractor", "hashes")
def hashes_answer(text: str) -> str | None:
    """GSM8K's convention: the final answer follows "####" (thousands separators dropped)."""
    if "####" not in text:
        return None
    return text.rsplit("####", 1)[1].strip().replace(",", "")


@register("extractor", "last_number")
def last_number_answer(text: str) -> str | None:
    numbers = _NUMBER.findall(text)
    return numbers[-1].replace(",", "") if numbers else None


def regex_extractor(pattern: str) -> Callable[[str], str | None]:
    compiled = re.compile(pattern, re.S)

    def extract(text: str) -> str | None:
        matches = list(compiled.finditer(text))
        if not matches:
            return None
        last = matches[-1]
        return last.group(1) if compiled.groups else last.group(0)
    return extract


def extractor_of(answer_format: str) -> Callable[[str], str | None]:
    """The extraction function of a format name (see the module docstring)."""
    if not answer_format:
        raise ValueError("no answer format given: set data.answer_format (boxed, hashes, "
                         "last_number, regex:<pattern>, or a registered/dotted extractor)")
    if answer_format.startswith("regex:"):
        return regex_extractor(answer_format[len("regex:"):])
    return lookup("extractor", answer_format)


def extract_answer(text: str, answer_format: str) -> str | None:
    """The response's final answer as a stripped string; None when empty or not stated."""
    value = extractor_of(answer_format)(text)
    if value is None:
        return None
    value = str(value).strip()
    return value or None
