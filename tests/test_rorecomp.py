"""RoRecomp (actors/rorecomp.py): the spec's worked example of priority membership and
compensation batches, and the learner batch that trains them (variable optimizer steps,
replayed rows against their behaviour log-probs)."""
import copy

import pytest
import torch

from actors.buffer import ReplayBuffer
from actors.rorecomp import RoRecomp
from core.models import build_tiny_policy
from core.records import Sample
from learners.prepare import build_train_batch, keep_advantages, recomposed_batch
from orchestrator.cluster import Cluster
from orchestrator.learner_group import LearnerGroup
from orchestrator.main import learner_settings
from orchestrator.scheduler import batch_recipe
from tests.conftest import compose
from tests.test_learner import ARCH, _samples


def _response(group: str, length: int, correct: bool, version: int = 0) -> Sample:
    return Sample(f"{group}-{'C' if correct else 'W'}{length}", group, [1], [2] * length,
                  [0.0] * length, version, reward=float(correct))


def _spec_group(name: str, version: int = 0) -> list[Sample]:
    """Spec section 2: correct lengths {300, 500, 900, 1200}, incorrect {400, 800, 1500, 2000}."""
    return ([_response(name, n, True, version) for n in (900, 300, 1200, 500)]
            + [_response(name, n, False, version) for n in (400, 2000, 800, 1500)])


def _names(samples):
    return sorted(s.prompt_id.split("-")[1] for s in samples)


def test_worked_example_priority_membership_and_one_compensation_batch():
    rorecomp = RoRecomp(alpha=0.5, capacity=8, p_comp=1.0)
    priority, compensation = rorecomp.recompose(_spec_group("a"), version=0)
    assert _names(priority) == ["C300", "C500", "W1500", "W2000"]
    assert compensation == [] and _names(rorecomp.waiting) == ["C1200", "C900", "W400", "W800"]
    # a second identical step fills the buffer (capacity 8): one compensation batch of both
    # steps' leftovers, the first step's first
    priority, compensation = rorecomp.recompose(_spec_group("b", version=1), version=1)
    assert _names(priority) == ["C300", "C500", "W1500", "W2000"]
    assert len(compensation) == 1 and len(compensation[0]) == 8
    assert [s.group_id for s in compensation[0]] == ["a"] * 4 + ["b"] * 4
    assert not rorecomp.waiting
    stats = rorecomp.stats()
    assert stats["rorecomp/compensation_steps"] == 1 and stats["rorecomp/priority_samples"] == 8
    assert stats["rorecomp/priority_correct_len"] == 400 and stats["rorecomp/priority_incorrect_len"] == 1750


def test_uniform_groups_give_one_side_and_rounding_is_up():
    rorecomp = RoRecomp(alpha=0.25, capacity=100)
    right = [_response("r", n, True) for n in (5, 3, 9)]
    priority, _ = rorecomp.recompose(right, version=0)
    assert [len(s.response_ids) for s in priority] == [3]        # ceil(0.25 x 3) = 1, shortest
    wrong = [_response("w", n, False) for n in (5, 3, 9, 7, 1)]
    priority, _ = rorecomp.recompose(wrong, version=0)
    assert [len(s.response_ids) for s in priority] == [9, 7]     # ceil(1.25) = 2, longest first


def test_ranks_p_comp_and_age_drop_what_they_must_and_count_it():
    # two ranks: the priority batch (5 responses from 3 + 2) loses one to the compensation buffer
    rorecomp = RoRecomp(alpha=0.5, capacity=4, unit=2, p_comp=0.0, max_age=1)
    group = [_response("g", n, True) for n in (1, 2, 3, 4, 5)] + [_response("g", 9, False)]
    priority, compensation = rorecomp.recompose(group, version=0)
    assert len(priority) == 4 and len(rorecomp.waiting) == 2
    # p_comp = 0: a full compensation batch is dropped, not trained
    priority, compensation = rorecomp.recompose(copy.deepcopy(group), version=1)
    assert compensation == [] and rorecomp.counters["dropped_p_comp"] == 4
    # responses more than max_age versions behind leave the buffer, counted
    rorecomp.recompose([_response("h", 3, True, version=5)], version=3)
    assert rorecomp.counters["dropped_too_old"] == 0
    rorecomp.recompose([], version=9)
    assert rorecomp.counters["dropped_too_old"] == 1 and not rorecomp.waiting
    with pytest.raises(ValueError, match="multiple of learner.num_ranks"):
        RoRecomp(capacity=3, unit=2)


def test_the_buffer_checkpoints_its_compensation_buffer():
    buffer = ReplayBuffer("fifo", rorecomp={"alpha": 0.5, "capacity": 8, "p_comp": 1.0})
    buffer.recompose(_spec_group("a"), 0)
    again = ReplayBuffer("fifo", rorecomp={"alpha": 0.5, "capacity": 8, "p_comp": 1.0})
    again.load_state_dict(buffer.state_dict())
    assert again.stats()["rorecomp/waiting_samples"] == 4
    _, compensation = again.recompose(_spec_group("b"), 0)
    assert [s.group_id for s in compensation[0]] == ["a"] * 4 + ["b"] * 4
    plain = ReplayBuffer("fifo")
    samples = _spec_group("c")
    assert plain.recompose(samples, 0) == (samples, [])


def test_recomposed_batch_keeps_each_steps_advantages_and_counts_optimizer_steps(tmp_path):
    cfg = compose(tmp_path, "buffer=rorecomp", "learner.mini_batch_size=3")
    recipe = batch_recipe(cfg)
    first, second = _samples()[:8], _samples()[8:]
    batch, _ = build_train_batch(first, recipe, 0)
    keep_advantages(first, batch)
    before = batch.extras["advantages"]
    for i, s in enumerate(first):
        assert s.advantages == before[i, :len(s.response_ids)].tolist()
    # priority: 4 of the first step's rows; compensation: 4 rows kept from before + 2 more
    build_train_batch(second, recipe, 0)
    keep_advantages(second, build_train_batch(second, recipe, 0)[0])
    out, metrics = recomposed_batch(first[:4], [first[4:] + second[:2]], recipe, 0)
    assert out.extras["mini_batch"].tolist() == [0, 0, 1, 1, 2, 2, 2, 3, 3, 3]
    assert out.extras["replayed"].tolist() == [0.0] * 4 + [1.0] * 6
    assert metrics == {"priority_samples": 4.0, "compensation_samples": 6.0,
                       "optimizer_steps": 4.0}
    for i, s in enumerate(first[4:] + second[:2], start=4):
        assert out.extras["advantages"][i, :len(s.response_ids)].tolist() == pytest.approx(s.advantages)
    # GRPO's seq-mean-token-mean: each optimizer step's weights sum to 1 (its rows' mean)
    for step in range(4):
        rows = out.extras["mini_batch"] == step
        assert float(out.extras["loss_weights"][rows].sum()) == pytest.approx(1.0)


def test_replayed_rows_train_against_their_behaviour_logprobs(tmp_path):
    """A compensation batch replays stale samples: its ratio is pi_theta / pi_behaviour,
    whatever recompute_old_logprobs says. So one replayed step equals a plain step with
    recompute_old_logprobs=false, and differs from a plain step that recomputes pi_old."""
    base = str(build_tiny_policy(tmp_path / "tiny", ARCH, seed=0))
    cfg = compose(tmp_path, "learner.mini_batch_size=16", "learner.micro_batch_size=16",
                  "learner.lr=1e-2", "rollout.max_new_tokens=9")
    recipe = batch_recipe(cfg)

    def step(samples_to_batch, **settings):
        cluster = Cluster("inline")
        group = LearnerGroup(cluster, base, {**learner_settings(cfg), "threads": 1, **settings},
                             1, use_reference=False)
        metrics = group.train_step(cluster.put(samples_to_batch()))
        state = cluster.get(group.state_future())
        group.shutdown()
        return metrics, state

    def plain():
        return build_train_batch(_samples(), recipe, 0)[0]

    def replayed():
        samples = _samples()
        keep_advantages(samples, build_train_batch(samples, recipe, 0)[0])
        return recomposed_batch([], [samples], recipe, 0)[0]

    _, with_behaviour = step(plain, recompute_old_logprobs=False)
    metrics, replay = step(replayed, recompute_old_logprobs=True)
    _, recomputed = step(plain, recompute_old_logprobs=True)
    assert metrics["optimizer_steps"] == 1
    for k in replay:
        assert torch.allclose(replay[k], with_behaviour[k], atol=1e-6), k
    assert any(not torch.allclose(replay[k], recomputed[k], atol=1e-4) for k in replay)
