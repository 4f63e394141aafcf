"""Packing one rank's rows into micro-batches by a token budget (learners/micro_batches.py):
the budget holds, every row runs exactly once, units stay whole, counts can be agreed."""
import logging
import random

import pytest
import torch

import learners.micro_batches as micro_batches
from core.records import Batch, Sample
from learners.micro_batches import (RowLengths, pack_by_tokens, rows_of, split_into,
                                    token_micro_batches, units_of, without_padding)


def _batch(prompt_lens, response_lens, groups=None):
    samples = [Sample(prompt_id="", group_id=str(g), prompt_ids=[5] * p, response_ids=[7] * r,
                      behaviour_logprobs=[-1.0] * r, policy_version=0)
               for p, r, g in zip(prompt_lens, response_lens, groups or range(len(prompt_lens)))]
    batch = Batch.from_samples(samples, pad_id=0)
    if groups is not None:
        batch.extras["group"] = torch.tensor(groups, dtype=torch.float)
    return batch


def _skewed(n, seed):
    rng = random.Random(seed)
    return ([rng.randint(1, 8) for _ in range(n)],
            [rng.choice([rng.randint(0, 4), rng.randint(20, 60)]) for _ in range(n)])


@pytest.mark.parametrize("seed", range(5))
def test_packing_respects_the_budget_and_covers_every_row_once(seed):
    prompts, responses = _skewed(40, seed)
    lengths = RowLengths(prompts, responses)
    budget = 150
    micros = pack_by_tokens(lengths, [[i] for i in range(40)], budget)
    rows = [rows_of(m) for m in micros]
    assert sorted(r for m in rows for r in m) == list(range(40))
    for m in rows:
        assert lengths.padded_tokens(m) <= budget or len(m) == 1
    # sorted by width, short rows share: far fewer forwards than one per row
    assert len(micros) < 40 / 2


def test_tensors_are_as_wide_as_the_budget_counts():
    """The count the packer budgets is the micro-batch tensor's real size after trimming."""
    prompts, responses = _skewed(24, 7)
    batch = _batch(prompts, responses)
    lengths = RowLengths.of(batch)
    assert lengths.prompt == prompts and lengths.response == responses
    for index in token_micro_batches(batch, 120, "row"):
        micro = without_padding(batch.select(index))
        assert micro.input_ids.numel() == lengths.padded_tokens(index.tolist())
        assert micro.input_ids.numel() <= 120 or len(index) == 1


def test_a_row_over_the_budget_runs_alone_with_one_warning(caplog, monkeypatch):
    monkeypatch.setattr(micro_batches, "_warned_oversize", False)
    lengths = RowLengths([2, 2, 2, 2, 2], [3, 40, 3, 50, 3])
    with caplog.at_level(logging.WARNING, logger="rewardmill"):
        micros = pack_by_tokens(lengths, [[i] for i in range(5)], 20)
        pack_by_tokens(lengths, [[i] for i in range(5)], 20)
    assert [rows_of(m) for m in micros] == [[0, 2, 4], [1], [3]]
    assert len([r for r in caplog.records if "micro_batch_tokens=20" in r.message]) == 1


def test_split_into_reaches_the_count_within_the_budget():
    prompts, responses = _skewed(16, 3)
    lengths = RowLengths(prompts, responses)
    micros = pack_by_tokens(lengths, [[i] for i in range(16)], 200)
    for count in range(len(micros), 17):
        split = split_into(micros, count, lengths)
        assert len(split) == count and all(split)
        assert sorted(rows_of([u for m in split for u in m])) == list(range(16))
        for m in split:
            assert lengths.padded_tokens(rows_of(m)) <= 200 or len(m) == 1
    with pytest.raises(ValueError):
        split_into(micros, 17, lengths)


def test_pairs_and_groups_stay_whole():
    prompts, responses = _skewed(12, 11)
    groups = [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    batch = _batch(prompts, responses, groups)
    assert units_of(batch, "group") == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    for unit, size in (("group", 3), ("pair", 2)):
        for index in token_micro_batches(batch, 60, unit):
            rows = index.tolist()
            assert len(rows) % size == 0
            for k in range(0, len(rows), size):   # whole units, in their own order
                assert rows[k:k + size] == list(range(rows[k], rows[k] + size))
                assert rows[k] % size == 0


def test_the_agreed_count_is_what_runs():
    prompts, responses = _skewed(10, 5)
    batch = _batch(prompts, responses)
    seen = []

    def agree(count, units):
        seen.append((count, units))
        return 10
    assert len(token_micro_batches(batch, 10_000, "row", agree)) == 10
    assert seen == [(1, 10)]
