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


def accepts_continuations(sample):
    """A verifier for repair tests. A random tiny guide cannot write a right sum, so a real
    verifier would never pass its repair; this one is toy_exact on every response the rollout
    wrote (so the failed ones really fail) and passes any guide continuation (metadata
    "continued_from", set by HFEngine.continue_from). The guide, the re-scoring, the plan and
    the substitution under test all run for real; only the verdict is forced."""
    from rewards.toy import toy_exact
    return 1.0 if "continued_from" in sample.metadata else toy_exact(sample)


def first_step_right(sample):
    """A step-level source (granularity: step) that calls the first step right and every later
    one wrong: any response of two or more steps is salvageable from its first step."""
    return [1.0] + [0.0] * (len(sample.steps or []) - 1)
