"""Group rewards built from pairwise comparisons inside a group."""
from __future__ import annotations

import random

from core.records import Sample
from core.registry import lookup, register


@register("reward", "bootstrapped_reference")
def bootstrapped_reference(samples: list[Sample], scorer: str, seed: int = 0,
                           tie_wins: bool = False) -> list[float]:
    """BRPO's reward (Writing-Zero, arXiv:2506.00103), scope "group".

    One response of the group, drawn at random (seeded by the group id), is the reference
    and scores 0; each other response gets +1 if it beats the reference, else -1. A tie
    is a loss unless `tie_wins` (the paper leaves it open: [inferred] default loss).
    `scorer` names a per-sample reward whose higher value wins. (With a pairwise judge,
    "beats" means winning in both orders of presentation.)
    """
    score = lookup("reward", scorer)
    ref = random.Random(f"{seed}/{samples[0].group_id}").randrange(len(samples))
    ref_score = score(samples[ref])
    beats = (lambda x: x >= ref_score) if tie_wins else (lambda x: x > ref_score)
    return [0.0 if i == ref else (1.0 if beats(score(s)) else -1.0)
            for i, s in enumerate(samples)]
