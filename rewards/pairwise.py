"""Group rewards built from pairwise comparisons inside a group."""
from __future__ import annotations

import random

from core.records import Sample
from core.registry import lookup, register


@register("reward", "bootstrapped_reference")
def bootstrapped_reference(samples: list[Sample], scorer: str, seed: int = 0) -> list[float]:
    """BRPO's reward (Writing-Zero, arXiv:2506.00103), scope "group".

    One response of the group, drawn at random (seeded by the group id), is the reference
    and scores 0; each other response gets +1 if it beats the reference, else -1 (a tie is
    a loss). `scorer` names a per-sample reward whose higher value wins. (With a pairwise
    judge, "beats" means winning in both orders of presentation.)
    """
    score = lookup("reward", scorer)
    ref = random.Random(f"{seed}/{samples[0].group_id}").randrange(len(samples))
    ref_score = score(samples[ref])
    return [0.0 if i == ref else (1.0 if score(s) > ref_score else -1.0)
            for i, s in enumerate(samples)]
