"""Reward shaping that depends only on the response itself."""
from __future__ import annotations

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
