"""Reasoning steps: split a response into steps and map per-step values onto its tokens."""
from __future__ import annotations

import torch


def split_steps(pieces: list[str], delimiter: str) -> tuple[list[str], list[int]]:
    """Split decoded token pieces into steps that each end with `delimiter`.

    Returns (step texts, per step the index just past its last token). A step ends on the
    token that completes a delimiter (which may span tokens); text after the last
    delimiter, if any, is a final step.
    """
    steps, ends, current = [], [], ""
    for i, piece in enumerate(pieces):
        current += piece
        if delimiter in current:
            steps.append(current)
            ends.append(i + 1)
            current = ""
    if current.strip():
        steps.append(current)
        ends.append(len(pieces))
    return steps, ends


def step_values_to_tokens(step_ends: list[int], values: list[float], length: int) -> torch.Tensor:
    """A [length] tensor holding each step's value on every token of that step."""
    out = torch.zeros(length)
    start = 0
    for end, value in zip(step_ends, values):
        out[start:min(end, length)] = value
        start = end
    return out
