"""Misbehaving reward functions, referenced by dotted path (tests.reward_fns.*) from configs."""
import time


def raises(sample):
    raise RuntimeError("verifier crashed")


def hangs(sample):
    time.sleep(3600)


def not_a_number(sample):
    return float("nan")


def length_bonus(sample, per_token=0.1):
    return per_token * len(sample.response_ids)


def group_rank(samples):
    """A group-scope source: each response's rank by length within its group."""
    order = sorted(range(len(samples)), key=lambda i: len(samples[i].response_ids))
    ranks = [0.0] * len(samples)
    for r, i in enumerate(order):
        ranks[i] = float(r)
    return ranks


def product(sample, sources):
    """A combination: the product of all sources' scores."""
    out = 1.0
    for src in sources:
        out *= sample.rewards[src.name]
    return out
