import json
import math
from collections import Counter

import pytest

from core.records import Prompt
from orchestrator.prompt_selection import (PromptSelectionConfig, curriculum_weight,
                                           make_prompt_selector)
from tasks.datasets import PromptStream

G = 8


class FakeDataset:
    def __init__(self, size: int, views_per_prompt: int = 1):
        self.prompts = [Prompt(f"q{i}", f"text {i}", i, {"row": i}) for i in range(size)]
        self.views_per_prompt = views_per_prompt

    def __len__(self):
        return len(self.prompts)

    def __getitem__(self, index):
        return self.prompts[index]


def make(kind="pairing", size=20, seed=0, group_size=G, **options):
    stream = PromptStream(FakeDataset(size), seed=seed)
    return make_prompt_selector({"kind": kind, **options}, stream, group_size, seed)


def group(successes, size=G):
    return [1.0] * successes + [0.0] * (size - successes)


def known(selector, counts):
    """Hand out len(counts) fresh prompts and observe counts[i] successes of G for the i-th;
    returns {successes: prompt_id}."""
    prompts = selector.next(len(counts))
    assert selector.metrics()["prompts/reused"] == 0
    selector.observe([(p.prompt_id, group(k)) for p, k in zip(prompts, counts)])
    return {k: p.prompt_id for p, k in zip(prompts, counts)}


def ids(prompts):
    return [p.prompt_id for p in prompts]


def test_pairing_candidates_follow_the_success_rate_bounds():
    sel = make(pairing_c=3, explore_fraction=0.5)
    by_count = known(sel, [0, 1, 3, 4, 5, 7, 8])
    m = sel.metrics()
    assert m["prompts/positive_candidates"] == 2      # 1/8 and 3/8, not 0/8 or 4/8
    assert m["prompts/negative_candidates"] == 2      # 7/8 and 5/8, not 8/8
    out = sel.next(8)                                 # 4 fresh, 4 places: 2 pairs
    assert ids(out[:4]) == [by_count[1], by_count[7], by_count[3], by_count[5]]
    assert out[0].metadata["pair_id"] == out[1].metadata["pair_id"]
    assert out[2].metadata["pair_id"] == out[3].metadata["pair_id"]
    assert out[0].metadata["pair_id"] != out[2].metadata["pair_id"]
    assert all("pair_id" not in p.metadata for p in out[4:])
    assert sel.metrics()["prompts/pairs"] == 2
    assert sel.metrics()["prompts/reused_success_rate"] == pytest.approx((1 + 7 + 3 + 5) / 32)
    # what the selector stores (and the dataset's own prompts) keep no pair_id
    assert all("pair_id" not in s.prompt.metadata for s in sel.pool.values())
    assert all("pair_id" not in p.metadata for p in sel.stream.dataset.prompts)


def test_pair_ids_are_unique_across_calls_and_ties_are_seeded():
    picks = set()
    for seed in range(12):
        sel = make(seed=seed, explore_fraction=0.5)
        served = ids(sel.next(3))
        by_id = dict(zip(served, [1, 1, 7]))
        sel.observe([(i, group(k)) for i, k in by_id.items()])
        first = sel.next(4)[0]
        picks.add(served.index(first.prompt_id))
        assert by_id[first.prompt_id] == 1
        again = sel.next(4)
        assert again[0].metadata["pair_id"] != first.metadata["pair_id"]
    assert picks == {0, 1}           # either 1/8 prompt wins the tie, depending on the seed


def test_explore_fraction_and_shortfall_give_exact_counts():
    sel = make(explore_fraction=0.25)
    known(sel, [1, 1, 2, 3, 7, 7, 6, 5])
    out = sel.next(8)                 # ceil(2) fresh, 6 places: 3 pairs
    m = sel.metrics()
    assert (len(out), m["prompts/fresh"], m["prompts/reused"], m["prompts/pairs"]) == (8, 2, 6, 3)
    out = sel.next(7)                 # odd: ceil(1.75) = 2 fresh, 5 places: 2 pairs, 3 fresh
    m = sel.metrics()
    assert (len(out), m["prompts/fresh"], m["prompts/reused"], m["prompts/pairs"]) == (7, 3, 4, 2)
    assert "pair_id" not in out[-1].metadata

    short = make(explore_fraction=0.25)
    known(short, [1, 7, 6, 5])        # one q+ only
    out = short.next(8)
    m = short.metrics()
    assert (len(out), m["prompts/fresh"], m["prompts/reused"], m["prompts/pairs"]) == (8, 6, 2, 1)


def test_no_duplicate_ids_when_the_stream_wraps_around():
    sel = make(size=6, explore_fraction=0.25)
    by_count = known(sel, [1, 7, 2, 6, 0, 8])   # the stream is now at the end of its epoch
    out = sel.next(6)                           # 2 pairs, then 2 fresh from the next epoch
    assert len(set(ids(out))) == 6 == len(out)
    assert set(ids(out[4:])) == {by_count[0], by_count[8]}
    with pytest.raises(ValueError, match="too few distinct prompts"):
        make(size=3).next(5)


def test_curriculum_prefers_medium_difficulty():
    sel = make("curriculum", size=10, explore_fraction=0.0)
    by_count = known(sel, [0, 4, 8])
    counts = Counter(sel.next(1)[0].prompt_id for _ in range(3000))
    assert sum(counts.values()) == 3000 and set(counts) <= set(by_count.values())
    # weights 1 vs 0.0917: the middle one expected ~84.5% of the draws
    assert counts[by_count[4]] > 5 * counts[by_count[0]]
    assert counts[by_count[4]] > 5 * counts[by_count[8]]
    assert counts[by_count[0]] > 0 and counts[by_count[8]] > 0     # the floor keeps them alive


def test_curriculum_draws_without_replacement_and_fills_with_fresh():
    sel = make("curriculum", explore_fraction=0.0)
    known(sel, [0, 4, 8])
    out = sel.next(5)
    m = sel.metrics()
    assert len(set(ids(out))) == 5 and (m["prompts/reused"], m["prompts/fresh"]) == (3, 2)


def test_curriculum_weight_formula():
    assert curriculum_weight(0.5) == pytest.approx(1.0)
    assert curriculum_weight(0.7) == pytest.approx(0.05 + 0.95 * math.exp(-0.5))
    assert curriculum_weight(0.3) == pytest.approx(curriculum_weight(0.7))
    assert curriculum_weight(0.0) == pytest.approx(0.05 + 0.95 * math.exp(-0.25 / 0.08))
    assert curriculum_weight(1.0, center=0.3, width=0.1, floor=0.0) == pytest.approx(
        math.exp(-0.49 / 0.02))


def test_min_attempts_defaults_to_one_group():
    sel = make(explore_fraction=0.0)
    prompts = sel.next(2)
    sel.observe([(prompts[0].prompt_id, group(1, 4)), (prompts[1].prompt_id, group(7, 4))])
    assert sel.metrics()["prompts/positive_candidates"] == 0   # 4 of G = 8 responses seen
    sel.observe([(prompts[0].prompt_id, group(0, 4))])
    assert sel.metrics()["prompts/positive_candidates"] == 1
    assert make(min_attempts=2).min_attempts == 2


def test_decay_forgets_old_results():
    for decay, rate, attempts in [(1.0, 0.5, 8), (0.5, 1 / 3, 6)]:
        sel = make("stream", group_size=4, decay=decay)
        pid = sel.next(1)[0].prompt_id
        sel.observe([(pid, [1.0] * 4)])
        sel.observe([(pid, [0.0] * 4)])
        assert sel.pool[pid].rate == pytest.approx(rate)
        assert sel.pool[pid].attempts == pytest.approx(attempts)


def test_pool_evicts_the_least_recently_observed_and_counts_unknown_ids():
    sel = make("stream", pool_size=3)
    a, b, c, d = ids(sel.next(4))
    sel.observe([(a, group(1)), (b, group(2)), (c, group(3))])
    sel.observe([(a, group(4)), (d, group(5))])
    assert list(sel.pool) == [c, a, d]
    sel.observe([("never-served", group(1))])
    m = sel.metrics()
    assert m["prompts/unknown_ids"] == 1 and m["prompts/pool_size"] == 3
    assert sel.pool[a].attempts == 2 * G


def test_threshold_decides_success():
    sel = make("stream", success_threshold=0.8)
    pid = sel.next(1)[0].prompt_id
    sel.observe([(pid, [0.8, 0.79, 1.0, 0.0])])
    assert sel.pool[pid].successes == 2


def run(selector, calls):
    """Calls of next(6), each observed with a deterministic success count per prompt."""
    out = []
    for _ in range(calls):
        prompts = selector.next(6)
        selector.observe([(p.prompt_id, group(int(p.prompt_id[1:]) % 9)) for p in prompts])
        out.append([(p.prompt_id, p.metadata) for p in prompts])
    return out, selector.metrics()


@pytest.mark.parametrize("kind", ["stream", "pairing", "curriculum"])
def test_state_round_trip_resumes_exactly(kind):
    original = make(kind, size=15, decay=0.9)
    run(original, 4)
    in_flight = original.next(6)                              # saved before its groups land
    state = json.loads(json.dumps(original.state_dict()))    # as a JSON checkpoint stores it
    resumed = make(kind, size=15, decay=0.9)
    resumed.load_state_dict(state)
    assert resumed.metrics() == original.metrics()
    for selector in (original, resumed):
        selector.observe([(p.prompt_id, group(3)) for p in in_flight])
    assert resumed.metrics() == original.metrics()
    assert resumed.metrics()["prompts/unknown_ids"] == 0
    expected, got = run(original, 6), run(resumed, 6)
    assert got == expected
    if kind == "pairing":
        assert any("pair_id" in meta for call in got[0] for _, meta in call)


def test_plain_prompt_stream_state_loads():
    reference = PromptStream(FakeDataset(10), seed=0)
    reference.load_state_dict({"epoch": 1, "position": 3})
    sel = make("stream", size=10)
    sel.load_state_dict({"epoch": 1, "position": 3})
    assert ids(sel.next(4)) == ids(reference.next(4))

    pairing = make(size=10)
    known(pairing, [1, 7])
    pairing.load_state_dict({"epoch": 0, "position": 2})
    assert pairing.metrics()["prompts/pool_size"] == 0 and not pairing.pending


def test_twin_views_are_refused_by_selecting_kinds():
    stream = PromptStream(FakeDataset(4, views_per_prompt=2), seed=0)
    assert make_prompt_selector({}, stream, G, 0).views_per_prompt == 2
    for kind in ("pairing", "curriculum"):
        with pytest.raises(ValueError, match="twin views are not supported.*twin_views"):
            make_prompt_selector(PromptSelectionConfig(kind=kind), stream, G, 0)


def test_config_is_checked():
    with pytest.raises(ValueError, match="kind"):
        make(kind="bandit")
    with pytest.raises(ValueError, match="explore_fraction"):
        make(explore_fraction=1.5)


def test_curriculum_loss_weights_peak_at_medium_difficulty_and_average_one():
    from orchestrator.prompt_selection import difficulty_loss_weights
    groups = [[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0]]
    weights = difficulty_loss_weights(groups, PromptSelectionConfig(kind="curriculum"))
    assert sum(weights) / len(weights) == pytest.approx(1.0)
    assert weights[0] > weights[3] > weights[1] == pytest.approx(weights[2])
    raw = [curriculum_weight(p) for p in (0.5, 0.0, 1.0, 0.75)]
    assert [w / weights[0] for w in weights] == pytest.approx([r / raw[0] for r in raw])
