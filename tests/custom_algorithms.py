"""A user's own estimator and loss, referenced from config by dotted path (tests.custom_algorithms.*)."""
from learners.advantages import Advantages, broadcast, group_stats


def centred_twice(x, scale=2.0):
    """Group-centred reward times `scale`."""
    return Advantages(broadcast(scale * (x.rewards - group_stats(x.rewards, x.group)[0]), x.mask))


def plain_pg(x):
    """Vanilla policy gradient, -A log pi, weighted like any other loss."""
    return (x.weights * -x.advantages * x.logprobs).sum(), {}
