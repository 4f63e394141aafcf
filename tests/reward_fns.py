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


class SeenBefore:
    """A stateful source: each sample's reward is how many samples it scored before it."""

    def __init__(self):
        self.seen = 0

    def __call__(self, sample):
        self.seen += 1
        return float(self.seen - 1)

    def state_dict(self) -> dict:
        return {"seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        self.seen = state["seen"]
