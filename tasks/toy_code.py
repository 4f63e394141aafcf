"""Toy verifiable code task: write a one-line Python function that fits a few examples.

    prompt:    "f(0)=47 f(1)=52 f(2)=57 ->"
    solution:  "def f(x):return 5*x+47"
    answer:    ["assert f(9)==92", "assert f(-4)==27", "assert f(12)==107", "assert f(-1)==42"]

The hidden function is a line `slope*x + intercept`. The examples show it at x = 0, 1, ...;
the unit tests check it at other points, so a table of the examples passes none of them (two
different lines meet at most once). The intercept can be read off f(0), but the slope must be
worked out (f(1) - f(0)), so the solution cannot be copied from the prompt. `code_tests` runs
the response against `answer` in the sandbox.

Problems are a pure function of (seed, split, index). A `held_out_fraction` of all
(slope, intercept) pairs is reserved for the "test" split, so held-out accuracy is measured on
functions the policy never saw in SFT or RL, not on repeats of training prompts.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

TEST_POINTS = range(-9, 16)   # where tests may check f (minus the example points)


@dataclass(frozen=True)
class Problem:
    prompt_id: str
    prompt: str
    solution: str          # the reference function, used for the SFT warm start
    answer: list[str]      # unit tests (Python snippets that raise on failure)


class ToyCode:
    """Fit `slope*x + intercept` from `examples` points; checked by `tests` held-out points."""

    def __init__(self, min_slope: int = -9, max_slope: int = 9, min_intercept: int = 0,
                 max_intercept: int = 99, examples: int = 3, tests: int = 4,
                 held_out_fraction: float = 0.1, seed: int = 0):
        if min_slope > max_slope or min_intercept > max_intercept:
            raise ValueError("need min_slope <= max_slope and min_intercept <= max_intercept")
        if not any(a for a in range(min_slope, max_slope + 1)):
            raise ValueError("the slope range holds no slope but 0")
        if not 2 <= examples <= 5:
            raise ValueError(f"examples must be in 2..5 (two points fix a line), got {examples}")
        if not 1 <= tests <= len(TEST_POINTS) - examples:
            raise ValueError(f"tests must be in 1..{len(TEST_POINTS) - examples}, got {tests}")
        if not 0 < held_out_fraction < 1:
            raise ValueError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}")
        self.slopes = [a for a in range(min_slope, max_slope + 1) if a != 0]
        self.intercepts = range(min_intercept, max_intercept + 1)
        self.examples, self.tests = examples, tests
        self.held_out_fraction, self.seed = held_out_fraction, seed
        for split in ("test", "train"):   # tiny ranges may leave a split empty: fail now
            self._function(random.Random(0), split)

    def is_held_out(self, slope: int, intercept: int) -> bool:
        """Whether this function belongs to the test split (a fixed hash, the same everywhere)."""
        digest = hashlib.sha256(f"{self.seed}/{slope}/{intercept}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2 ** 64 < self.held_out_fraction

    def problem(self, split: str, index: int) -> Problem:
        rng = random.Random(f"{self.seed}/{split}/{index}")
        slope, intercept = self._function(rng, split)
        f = lambda x: slope * x + intercept   # noqa: E731
        prompt = " ".join(f"f({x})={f(x)}" for x in range(self.examples)) + " ->"
        points = rng.sample([x for x in TEST_POINTS if x >= self.examples or x < 0], self.tests)
        tests = [f"assert f({x})=={f(x)}" for x in points]
        return Problem(f"code-{split}-{index}", prompt, reference_solution(slope, intercept), tests)

    def _function(self, rng: random.Random, split: str) -> tuple[int, int]:
        """(slope, intercept) of this split, by rejection: ~1/held_out_fraction draws for test."""
        for _ in range(100_000):
            slope, intercept = rng.choice(self.slopes), rng.choice(self.intercepts)
            if self.is_held_out(slope, intercept) == (split == "test"):
                return slope, intercept
        raise ValueError(f"no function of these slope/intercept ranges falls in the {split!r} "
                         "split: widen the ranges or change held_out_fraction")


def reference_solution(slope: int, intercept: int) -> str:
    """One canonical spelling, so SFT teaches a single format: "def f(x):return -3*x+47"."""
    return f"def f(x):return {slope}*x{intercept:+d}"
