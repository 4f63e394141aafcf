"""How a rollout batch is cut: into global mini-batches (one optimizer step each), and one
rank's rows of a mini-batch into micro-batches (one forward/backward each): a fixed number of
rows (learner.micro_batch_size), or as many rows as fit a token budget (learner.micro_batch_tokens).

With a budget, rows are sorted by length and packed so that rows x widest row (prompt and
response after padding) stays within it: short rows share a micro-batch, a long one may run
alone. Every loss term is a sum with weights fixed per global mini-batch (learners/losses.py),
so the grouping changes memory and speed, never the optimizer step.

Rows that must share a micro-batch form a unit and are never split: a preference pair, or a
prompt group for losses that need whole groups (PACS).

These functions are pure; the learner agrees the micro-batch count across ranks (FSDP runs a
collective in every forward, so every rank must run as many) and calls `split_into`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from core.records import Batch

log = logging.getLogger("rewardmill")

Unit = list[int]           # row indices that stay together
MicroBatch = list[Unit]

_warned_oversize = False   # the over-budget warning is logged once per process


@dataclass(frozen=True)
class RowLengths:
    """Real (unpadded) prompt and response tokens of each row."""

    prompt: list[int]
    response: list[int]

    @classmethod
    def of(cls, rows: Batch) -> "RowLengths":
        P = rows.prompt_len
        return cls(rows.attention_mask[:, :P].sum(1).tolist(),
                   rows.attention_mask[:, P:].sum(1).tolist())

    def width(self, rows: list[int]) -> int:
        """Columns of these rows once padded together (prompts left, responses right); at
        least one of each, as the learner's forward keeps them."""
        return (max(1, max(self.prompt[i] for i in rows))
                + max(1, max(self.response[i] for i in rows)))

    def padded_tokens(self, rows: list[int]) -> int:
        return len(rows) * self.width(rows)


def mini_batch_ids(phase_sizes: list[int], size: int, unit: int = 1) -> torch.Tensor:
    """[B] the optimizer step each row belongs to (the learner steps once per id, in order).
    Rows come as consecutive phases (one rollout batch, or RoRecomp's priority and
    compensation batches); a phase of n rows takes ceil(n / size) steps of near-equal size,
    each a multiple of `unit` rows (the learner ranks split every step evenly)."""
    ids, step = [], 0
    for n in phase_sizes:
        if n % unit:
            raise ValueError(f"a phase of {n} rows does not split evenly over {unit} ranks")
        units, steps = n // unit, -(-n // size)
        ids += [step + (k // unit) * steps // units for k in range(n)]
        step += steps
    return torch.tensor(ids, dtype=torch.long)


def mini_batch_rows(mini: torch.Tensor) -> list[slice]:
    """The row slice of each optimizer step of `mini` (mini_batch_ids)."""
    _, counts = torch.unique_consecutive(mini, return_counts=True)
    ends = counts.cumsum(0).tolist()
    return [slice(end - n, end) for end, n in zip(ends, counts.tolist())]


def by_rows(n: int, size: int) -> list[slice]:
    """The row-count split: consecutive slices of `size` rows."""
    return [slice(i, i + size) for i in range(0, n, size)]


def units_of(rows: Batch, unit: str) -> list[Unit]:
    """"row": each row alone; "pair": rows 2k, 2k+1; "group": consecutive rows with the same
    extras["group"] (prompt groups arrive contiguous)."""
    n = len(rows)
    if unit == "row":
        return [[i] for i in range(n)]
    if unit == "pair":
        return [list(range(i, min(i + 2, n))) for i in range(0, n, 2)]
    if unit == "group":
        group = rows.extras["group"].tolist()
        units: list[Unit] = []
        for i in range(n):
            if units and group[i] == group[units[-1][-1]]:
                units[-1].append(i)
            else:
                units.append([i])
        return units
    raise ValueError(f"unknown micro-batch unit {unit!r}; choose row, pair or group")


def pack_by_tokens(lengths: RowLengths, units: list[Unit], budget: int) -> list[MicroBatch]:
    """Units sorted by width, then filled greedily while rows x width <= budget. A unit over
    the budget on its own gets a micro-batch of its own (and one warning per process)."""
    global _warned_oversize
    order = sorted(units, key=lambda u: (lengths.width(u), u[0]))
    micros: list[MicroBatch] = []
    current: MicroBatch = []
    rows: list[int] = []
    for unit in order:
        if current and lengths.padded_tokens(rows + unit) > budget:
            micros.append(current)
            current, rows = [], []
        alone = lengths.padded_tokens(unit)
        if alone > budget and not _warned_oversize:
            _warned_oversize = True
            log.warning("learner.micro_batch_tokens=%d: a %s of %d padded tokens exceeds it and "
                        "runs in a micro-batch of its own (raise the budget if it runs out of "
                        "memory; warned once)", budget, "row" if len(unit) == 1 else
                        f"unit of {len(unit)} rows", alone)
        current.append(unit)
        rows = rows + unit
    if current:
        micros.append(current)
    return micros


def split_into(micros: list[MicroBatch], count: int, lengths: RowLengths) -> list[MicroBatch]:
    """Exactly `count` micro-batches: halve the one with the most padded tokens until there
    are enough (a subset of rows never needs more tokens, so the budget still holds). Needs
    at least `count` units."""
    micros = list(micros)
    if count < len(micros) or count > sum(len(m) for m in micros):
        raise ValueError(f"cannot split {sum(len(m) for m in micros)} units packed in "
                         f"{len(micros)} micro-batches into {count}")
    while len(micros) < count:
        i = max((k for k, m in enumerate(micros) if len(m) > 1),
                key=lambda k: lengths.padded_tokens(rows_of(micros[k])))
        half = len(micros[i]) // 2
        micros[i:i + 1] = [micros[i][:half], micros[i][half:]]
    return micros


def rows_of(micro: MicroBatch) -> list[int]:
    return [row for unit in micro for row in unit]


def without_padding(micro: Batch) -> Batch:
    """Drop the columns that are padding in every row: trailing response columns (as
    Batch.trimmed) and leading prompt columns, so a micro-batch is as wide as its widest row.
    Left padding is masked and position ids count real tokens, so no value changes."""
    micro = micro.trimmed()
    P = micro.prompt_len
    real = micro.attention_mask[:, :P].any(0).nonzero()
    cut = min(int(real.min()) if len(real) else P - 1, P - 1)   # keep >= 1 prompt column
    if cut <= 0:
        return micro
    return Batch(micro.input_ids[:, cut:], micro.attention_mask[:, cut:],
                 micro.position_ids[:, cut:], micro.response_mask, micro.behaviour_logprobs,
                 P - cut, micro.extras)


def token_micro_batches(rows: Batch, budget: int, unit: str,
                        agree=lambda count, units: count) -> list[torch.Tensor]:
    """Row indices of each micro-batch under a token budget. `agree(count, units)` returns
    the count every rank will run (the learner's all-reduce); the default keeps our own."""
    lengths = RowLengths.of(rows)
    units = units_of(rows, unit)
    micros = pack_by_tokens(lengths, units, budget)
    count = agree(len(micros), len(units))
    return [torch.tensor(rows_of(m)) for m in split_into(micros, count, lengths)]
