"""Toy verifiable task: multi-digit addition solved with a per-digit scratchpad.

    prompt:    "347+285="
    solution:  "7+5=12;4+8+1=13;3+2+1=6;#632"

One step per digit column, least significant first: the column's digits, "+1" when a carry
comes in, and the column sum. The steps give a step-level verifier (`check_steps`) and a
length that grows with the number of digits; the answer after "#" is checked exactly.
Problems are a pure function of (seed, split, index), so any process can regenerate them.

With `recheck` > 0 the worked solutions sometimes re-check a step by writing it again
("7+5=12;7+5=12;4+8+1=13;..."), so the warm-started policy's length is partly its own choice,
as a reasoning model's verbosity is, while the answer stays the same (RoRecomp's setting).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from core.registry import register

STEP_END = ";"
ANSWER_MARK = "#"


@dataclass(frozen=True)
class Problem:
    prompt_id: str
    prompt: str
    solution: str          # the worked scratchpad, used for the SFT warm start
    answer: int


class ToyArithmetic:
    """Addition of `operands` numbers with `min_digits`..`max_digits` digits each."""

    def __init__(self, min_digits: int = 1, max_digits: int = 3, operands: int = 2,
                 seed: int = 0, recheck: float = 0.0):
        if not 1 <= min_digits <= max_digits:
            raise ValueError(f"need 1 <= min_digits <= max_digits, got {min_digits}, {max_digits}")
        if operands < 2:
            raise ValueError(f"operands must be >= 2, got {operands}")
        if not 0 <= recheck < 1:
            raise ValueError(f"recheck must be in [0, 1), got {recheck}")
        self.min_digits, self.max_digits, self.operands, self.seed = (
            min_digits, max_digits, operands, seed)
        self.recheck = recheck

    def problem(self, split: str, index: int) -> Problem:
        rng = random.Random(f"{self.seed}/{split}/{index}")
        numbers = []
        for _ in range(self.operands):
            digits = rng.randint(self.min_digits, self.max_digits)
            low = 0 if digits == 1 else 10 ** (digits - 1)
            numbers.append(rng.randint(low, 10 ** digits - 1))
        prompt = "+".join(map(str, numbers)) + "="
        solution = scratchpad(numbers, rng if self.recheck else None, self.recheck)
        return Problem(f"toy-{split}-{index}", prompt, solution, sum(numbers))


MAX_RECHECKS = 2   # times a worked solution writes one step again, at most


def scratchpad(numbers: list[int], rng: random.Random | None = None, recheck: float = 0.0) -> str:
    """The worked solution; with `rng`, each step is written again while rng.random() <
    recheck, up to MAX_RECHECKS times."""
    columns = max(len(str(n)) for n in numbers)
    steps, carry = [], 0
    for col in range(columns):
        digits = [(n // 10 ** col) % 10 for n in numbers]
        total = sum(digits) + carry
        terms = "+".join(map(str, digits)) + (f"+{carry}" if carry else "")
        steps.append(f"{terms}={total}")
        for _ in range(MAX_RECHECKS if rng else 0):
            if rng.random() >= recheck:
                break
            steps.append(steps[-1])
        carry = total // 10
    return STEP_END.join(steps) + STEP_END + ANSWER_MARK + str(sum(numbers))


def extract_answer(response: str) -> int | None:
    """The integer after the last '#', or None when there is none."""
    if ANSWER_MARK not in response:
        return None
    tail = response.rsplit(ANSWER_MARK, 1)[1].strip()
    return int(tail) if tail.isdigit() else None


@register("extractor", "toy")
def toy_answer(text: str) -> str | None:
    """The toy scratchpad's answer format (data.answer_format=toy): the integer after '#'."""
    value = extract_answer(text)
    return None if value is None else str(value)


def without_rechecks(response: str) -> str:
    """The response with each step that repeats the one before it removed."""
    head, mark, tail = response.partition(ANSWER_MARK)
    steps = head.split(STEP_END)
    kept = [step for k, step in enumerate(steps) if k == 0 or step != steps[k - 1] or step == ""]
    return STEP_END.join(kept) + mark + tail


def check_steps(prompt: str, response: str) -> list[bool]:
    """Oracle step checker: for each written step, is it the correct column computation?

    A step that repeats the one before it is a re-check: right when that one was. Each other
    step must equal the next step of the true scratchpad exactly; steps past the true number
    of columns are wrong.
    """
    numbers = [int(x) for x in prompt.rstrip("=").split("+")]
    truth = scratchpad(numbers).split(ANSWER_MARK)[0].split(STEP_END)[:-1]
    written = response.split(ANSWER_MARK)[0].split(STEP_END)
    if written and written[-1] == "":
        written = written[:-1]
    verdicts, column = [], 0
    for k, step in enumerate(written):
        if k and step == written[k - 1]:
            verdicts.append(verdicts[-1])
            continue
        verdicts.append(column < len(truth) and step == truth[column])
        column += 1
    return verdicts


def corrupt(solution: str, rng: random.Random) -> str:
    """A wrong version of a worked solution: one digit of a column sum or of the answer
    changed (a rejected response for preference pairs)."""
    positions = [i for i, c in enumerate(solution) if c.isdigit()
                 and (solution[i - 1] in "=#" or solution[i - 1].isdigit()) and "=" in solution[:i]]
    i = rng.choice(positions)
    digit = str((int(solution[i]) + rng.randint(1, 9)) % 10)
    return solution[:i] + digit + solution[i + 1:]
