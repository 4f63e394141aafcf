import torch

from actors.buffer import GroupFilter, ReplayBuffer
from core.records import Sample
from orchestrator.checkpoint import Checkpoints


def _group(gid, version, n=2):
    return [Sample(gid, gid, [1], [2], [0.0], version) for _ in range(n)]


def test_fifo_serves_whole_groups_in_arrival_order():
    buf = ReplayBuffer("fifo")
    buf.add(_group("a", 0) + _group("b", 0))
    buf.add(_group("c", 0))
    assert buf.next_batch(4, current_version=0) is None
    batch = buf.next_batch(2, current_version=0)
    assert [s.group_id for s in batch] == ["a", "a", "b", "b"]
    assert [s.group_id for s in buf.next_batch(1, 0)] == ["c", "c"]


def test_stale_groups_are_dropped_and_counted():
    buf = ReplayBuffer("fifo", max_staleness=1)
    buf.add(_group("old", 3) + _group("ok", 4) + _group("new", 5))
    batch = buf.next_batch(2, current_version=5)
    assert [s.group_id for s in batch][::2] == ["ok", "new"]
    assert buf.stats()["buffer/dropped_stale_groups"] == 1


def test_buffer_state_round_trips():
    buf = ReplayBuffer("fifo")
    buf.add(_group("a", 0) + _group("b", 0))
    buf.next_batch(1, 0)
    again = ReplayBuffer("fifo")
    again.load_state_dict(buf.state_dict())
    assert again.stats() == buf.stats()
    assert [s.group_id for s in again.next_batch(1, 0)] == ["b", "b"]


def test_half_written_checkpoints_are_never_picked(tmp_path):
    ck = Checkpoints(tmp_path, keep=2)
    for step in (1, 2, 3):
        tmp = ck.staging(step)
        (tmp / "policy").mkdir()
        ck.commit(tmp, {"step": step}, {"queue": []})
    crashed = ck.staging(4)       # a run killed while writing step 4
    (crashed / "policy").mkdir()
    assert ck.latest().name == "step_000003"
    assert [p.name for p in ck.complete()] == ["step_000002", "step_000003"]  # keep=2
    state, buffer_state, _ = Checkpoints.read(ck.latest())
    assert state == {"step": 3} and buffer_state == {"queue": []}
    assert isinstance(torch.load(ck.latest() / "buffer.pt"), dict)


def _scored_group(gid, rewards):
    return [Sample(gid, gid, [1], [2], [0.0], 0, reward=r) for r in rewards]


def test_dynamic_sampling_drops_uniform_groups_and_pads_only_when_told():
    # Spec section 11: group accuracies {0, 0.5, 1, 0.25} keep 2 of the 4 groups.
    buf = ReplayBuffer("fifo")
    buf.add(_scored_group("a", [0, 0, 0, 0]) + _scored_group("b", [1, 0, 1, 0])
            + _scored_group("c", [1, 1, 1, 1]) + _scored_group("d", [1, 0, 0, 0]),
            group_filter=GroupFilter("uniform"))
    assert buf.stats()["buffer/filtered_groups"] == 2
    assert buf.next_batch(3, 0, pad_with_set_aside=False) is None   # sample another round
    batch = buf.next_batch(3, 0, pad_with_set_aside=True)            # last round: pad
    assert [s.group_id for s in batch][::4] == ["b", "d", "a"]
    assert buf.stats()["buffer/padded_groups"] == 1
