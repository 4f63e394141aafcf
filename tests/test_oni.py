"""ONI (shared/methods/algorithms-and-buffers.md section 1): the formula's worked examples, the
intrinsic models learning, and the asynchronous labeler against a real judge (scripts/serve.py
around a tiny model, slowed with --latency-s) — deduplication, a full queue, newest-first
batches, late labels, checkpoints."""
import io
import json
import logging
import math
import random
import subprocess
import sys
import time
from collections import deque

import pytest
import torch

from actors.labeler import (LOCAL_LABELERS, SEP, Labeler, OniReward, find_labeler, make_key,
                            parse_preference, parse_verdict, take_newest)
from core.records import Sample
from rewards.oni import (IntrinsicModel, RunningMeanStd, bradley_terry_loss, count_scaled,
                         normalise_and_threshold, oni_reward, reward_clip, running_counts)
from tests.conftest import REPO

NEWT = "You kill the newt!"


# --- the formula -------------------------------------------------------------------------------

def test_worked_example_and_an_unseen_message_is_queued_once():
    # H = {newt: 1}; the newt's 2nd time this episode (N = 2), r_ext = 2.0 on NetHackScore
    assert oni_reward(2.0, 1.0, 2, c_ext=0.1, c_int=0.4, beta=3) == pytest.approx(0.25)
    labeler = Labeler(start=False)            # no worker thread: only the caller's side
    labeler.merge({NEWT: 1.0})
    step = [NEWT, NEWT] + ["You hear a door open."] * 5
    rewards, labeled = labeler.annotate(step)
    c = count_scaled(rewards, step, beta=3)
    assert 0.1 * 2.0 + 0.4 * c[1] == pytest.approx(0.25)                 # the newt, N = 2
    assert 0.1 * 2.0 + 0.4 * c[2] == pytest.approx(0.2)                  # unseen: default 0
    assert labeled == [True, True] + [False] * 5
    stats = labeler.stats()
    assert stats["enqueued"] == 1 and stats["queue_depth"] == 1 and list(labeler.queue) == [
        "You hear a door open."]
    labeler.annotate(step)                    # still pending: not queued again
    assert labeler.stats()["enqueued"] == 1
    assert (stats["hits"], stats["misses"]) == (2, 5)
    assert running_counts(["a", "b", "a", "a"]) == [1, 1, 2, 3]
    assert reward_clip(12.0) == 10.0 and reward_clip(-12.0) == -10.0


def test_bradley_terry_tie_and_ranking_normalisation():
    zero = torch.zeros(1)
    assert bradley_terry_loss(zero, zero, torch.tensor([0.5])).item() == pytest.approx(math.log(2))
    # a confident right preference costs little, a wrong one a lot
    r1, r2 = torch.tensor([3.0]), torch.tensor([0.0])
    assert bradley_terry_loss(r1, r2, torch.tensor([0.0])) < 0.05 < bradley_terry_loss(
        r1, r2, torch.tensor([1.0]))
    stats = RunningMeanStd()
    stats.update([0.0, 2.0])
    stats.update([4.0])                       # merged by batches: same as all at once
    values = torch.tensor([0.0, 2.0, 4.0])
    assert stats.mean == pytest.approx(2.0) and stats.std == pytest.approx(values.std(
        unbiased=False).item())
    z = normalise_and_threshold([0.0, 2.0, 4.0, 1.5], stats, eps_threshold=-0.5)
    assert z[0] == 0.0 and z[1] == 0.0 and z[2] == pytest.approx(2 / stats.std)   # -1.22 -> 0
    assert z[3] == pytest.approx(-0.5 / stats.std)                                 # -0.41 kept


def test_judge_replies_parse_and_a_garbled_one_does_not():
    assert parse_verdict("It helps. <label>yes</label>") == 1.0
    assert parse_verdict("<label>yes</label> no wait, <label>NO</label>") == 0.0   # last wins
    assert parse_verdict("Yes, it is right.") == 1.0 and parse_verdict("q7#x") is None
    assert parse_preference('{"best_description": 2}') == 1.0
    assert parse_preference('"best_description": None') == 0.5
    assert parse_preference("both fine") is None
    assert take_newest(deque("abcde"), 2) == ["e", "d"]


# --- the intrinsic models learn -----------------------------------------------------------------

GOOD = [f"{a}+{b}={a + b}" for a in range(1, 9) for b in range(1, 4)]      # right sums
BAD = [f"{a}+{b}={a + b + 3}" for a in range(1, 9) for b in range(1, 4)]   # wrong by 3


def separable(i: int) -> tuple[str, str]:
    """A trivially separable set: helpful keys say so, unhelpful ones do not."""
    return f"ok step {i} fine", f"bad step {i} wrong"


def test_classification_learns_a_separable_label_set_with_a_margin():
    model = IntrinsicModel("classification", default=-1.0, lr=3e-3, seed=0)
    assert model.rewards(["ok step 1 fine"]) == ([-1.0], [False])   # untrained: the default
    model.add_labels({k: float(y) for i in range(30) for k, y in zip(separable(i), (1, 0))})
    model.train_steps(steps=60, batch_size=32)
    model.publish()
    held_out = [separable(i) for i in range(100, 110)]
    p_good = model.probabilities([g for g, _ in held_out])
    p_bad = model.probabilities([b for _, b in held_out])
    assert min(p_good) > 0.9 and max(p_bad) < 0.1, (p_good, p_bad)
    rewards, labeled = model.rewards([held_out[0][0], held_out[0][1]])
    assert rewards == [1.0, 0.0] and labeled == [True, True]
    capped = IntrinsicModel("classification", dataset_cap=4)
    capped.add_labels({str(i): 1.0 for i in range(4)})
    assert capped.train_steps(steps=2, batch_size=2) == {}        # ONI: no training past the cap


def test_ranking_learns_preferences_and_normalises_its_rewards():
    model = IntrinsicModel("ranking", lr=3e-3, seed=0)
    # judged pairs in both orders, and ties between two good keys
    pairs = [(g, b, 0.0) for i in range(20) for g, b in [separable(i)]]
    pairs += [(b, g, 1.0) for i in range(20, 40) for g, b in [separable(i)]]
    pairs += [(separable(i)[0], separable(i + 1)[0], 0.5) for i in range(40, 50)]
    model.add_pairs(pairs)
    model.train_steps(steps=60, batch_size=32)
    model.publish()
    good, bad = zip(*[separable(i) for i in range(100, 110)])
    assert min(model.scores(list(good))) > max(model.scores(list(bad))) + 1.0
    rewards, labeled = model.rewards(list(good) + list(bad))
    assert all(labeled) and model.stats.count == 20
    # normalised: good keys well above the mean, bad ones below -0.5 std: zeroed
    assert min(rewards[:10]) > 0.5 and rewards[10:] == [0.0] * 10
    raw = IntrinsicModel("ranking", normalise=False)
    raw.load_state_dict(model.state_dict())
    assert raw.rewards(list(bad))[0] == pytest.approx(model.scores(list(bad)), abs=1e-5)


# --- checkpoints ----------------------------------------------------------------------------

def test_labeler_state_dict_round_trip():
    labeler = Labeler(start=False, kind="classification", lr=3e-3, train_steps=10, train_batch=16)
    labeler.merge({k: float(y) for i in range(10) for k, y in zip(separable(i), (1, 0))},
                  train=True)
    keys = ["ok step 50 fine", "bad step 51 wrong", "unseen one", "unseen two"]
    before = labeler.annotate(keys)
    buffer = io.BytesIO()                      # as a checkpoint stores it
    torch.save(labeler.state_dict(), buffer)
    buffer.seek(0)
    restored = Labeler(start=False, kind="classification")
    restored.load_state_dict(torch.load(buffer, weights_only=False))
    assert restored.stats() == labeler.stats()
    assert restored.annotate(keys) == labeler.annotate(keys) == before
    assert list(restored.queue) == keys         # the pending keys are queued again, once each
    assert restored.model.state_dict()["optimizer"]["state"].keys() == labeler.model.state_dict()[
        "optimizer"]["state"].keys()
    with pytest.raises(ValueError, match="ranking"):
        Labeler(start=False, kind="ranking").load_state_dict(labeler.state_dict())


def test_a_restarted_labeler_reads_its_label_log_back_and_asks_for_nothing_twice(tmp_path):
    """A labeler whose process died comes back empty; the judge's answers it had logged are
    merged again, so those keys score at once and are never queued for the judge again."""
    log_path = tmp_path / "labels" / "labeler.jsonl"
    first = Labeler(start=False, label_log=str(log_path))
    first.merge({"a": 1.0, "b": 0.0})
    with log_path.open("a") as f:
        f.write('{"key": "c", "lab')                 # the process died mid-write
    again = Labeler(start=False, label_log=str(log_path))
    rewards, labeled = again.annotate(["a", "b", "c"])
    assert rewards[:2] == [1.0, 0.0] and labeled == [True, True, False]
    assert list(again.queue) == ["c"]                 # only the unlabeled key goes to the judge
    # a checkpoint older than the log: loading it keeps the labels that came after
    old = Labeler(start=False).state_dict()
    again.load_state_dict(old)
    assert again.annotate(["a"], enqueue=False) == ([1.0], [True])
    ranking = Labeler(start=False, kind="ranking", label_log=str(tmp_path / "pairs.jsonl"))
    ranking.merge(pairs=[("x", "y", 1.0)])
    back = Labeler(start=False, kind="ranking", label_log=str(tmp_path / "pairs.jsonl"))
    assert back.done_pairs == {("x", "y")} and back.model.dataset_size == 1


def test_ranking_labeler_queues_distinct_unlabeled_pairs():
    labeler = Labeler(start=False, kind="ranking", subsample=2, batch_size=4, pairs_per_refill=5)
    keys = [f"k{i}" for i in range(8)]
    labeler.annotate(keys)
    assert labeler.observations == keys[1::2]                 # every 2nd key seen
    queued = list(labeler.queue)
    assert len(queued) == 5 and len({tuple(sorted(p)) for p in queued}) == 5
    labeler.merge(pairs=[(a, b, 0.5) for a, b in queued])
    labeler.queue.clear()
    labeler.pending.clear()
    labeler.annotate([])             # refill: of the 6 pairs of 4 keys, only the one left
    assert len(labeler.queue) <= 1
    assert all(tuple(sorted(p)) not in labeler.done_pairs for p in labeler.queue)


# --- the reward source ------------------------------------------------------------------------

def toy_sample(steps: list[str], question: str = "347+285=") -> Sample:
    s = Sample("p", "g", [], [], [], 0, prompt_text=question, response_text=";".join(steps))
    s.steps = steps
    return s


def test_source_sums_count_scaled_keys_and_uses_a_named_local_labeler():
    shared = Labeler(start=False)
    LOCAL_LABELERS["test-oni"] = shared
    try:
        source = OniReward(key="step", context="none", beta=1.0, labeler="test-oni")
        shared.merge({"7+5=12": 1.0, "#632": 1.0})
        sample = toy_sample(["7+5=12", "7+5=12", "4+8+1=13", "#632"])
        assert source(sample) == pytest.approx(1 + 1 / 2 + 0 + 1)       # 2nd repeat: 1/2^1
        assert find_labeler("test-oni") is shared and source.state_dict() == {}
        per_step = OniReward(key="step", context="none", beta=1.0, labeler="test-oni",
                             granularity="step")
        assert per_step([sample, sample]) == [[1.0, 0.5, 0.0, 1.0]] * 2
        assert shared.stats()["enqueued"] == 1                          # "4+8+1=13", once
        source.learning = False                                         # held-out: read only
        source(toy_sample(["9+9=18"]))
        assert shared.stats()["enqueued"] == 1
        # key answer with the question: the toy task's answer after '#'
        answer = OniReward(key="answer", answer_format="toy", labeler="test-oni")
        answer(toy_sample(["7+5=12", "#632"]))
        assert list(shared.queue)[-1] == make_key("632", "347+285=") == f"347+285={SEP}632"
    finally:
        LOCAL_LABELERS.pop("test-oni")
    with pytest.raises(TypeError, match="batchsize"):
        OniReward(batchsize=3)
    with pytest.raises(ValueError, match="answer_format"):
        OniReward(key="answer")


def test_the_oni_config_builds_its_sources(tmp_path):
    from actors.reward import RewardWorker
    from omegaconf import OmegaConf
    from orchestrator.config import validate
    from tests.conftest import compose
    cfg = compose(tmp_path, "cluster=inline", "reward=oni", "judge.url=http://127.0.0.1:9/v1")
    validate(cfg)
    worker = RewardWorker(OmegaConf.to_container(cfg.reward.sources, resolve=True),
                          combine=cfg.reward.combine)
    source = worker.functions["oni"]
    assert isinstance(source, OniReward) and worker.sources[1].weight == 0.4   # c_int
    own, labeler_kwargs = OniReward.split_kwargs(
        OmegaConf.to_container(cfg.reward.sources[1].kwargs, resolve=True))
    assert own["key"] == "step" and labeler_kwargs["batch_size"] == 100
    assert worker.state_dict() == {"oni": {}}   # no labeler built before the first call


# --- against a real, slow judge -------------------------------------------------------------

LATENCY_S = 0.5


@pytest.fixture(scope="module")
def slow_judge(tmp_path_factory):
    """scripts/serve.py around a tiny random model; every generate call waits LATENCY_S."""
    from core.models import build_tiny_policy
    model = build_tiny_policy(tmp_path_factory.mktemp("oni") / "tiny", dict(
        model_type="qwen2", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=64, max_position_embeddings=1024,
        tie_word_embeddings=True), seed=0)
    proc = subprocess.Popen([sys.executable, "scripts/serve.py", "--model", str(model), "--port",
                             "0", "--threads", "1", "--latency-s", str(LATENCY_S)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    yield json.loads(proc.stdout.readline())["url"]
    proc.terminate()
    proc.wait()


def judged(url: str, **kwargs) -> Labeler:
    # the tiny model writes garbage: short replies keep it fast; they are labeled 0 (unparsed)
    return Labeler(url, **({"max_tokens": 4, "request_timeout_s": 30, "retries": 0} | kwargs))


def wait_for(condition, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_nothing_is_labeled_twice_across_many_calls(slow_judge):
    from rewards.judge_client import client_for
    labeler = judged(slow_judge, batch_size=4)
    client = client_for(slow_judge, "judge", 30, 0, 8)     # the one the labeler will use
    sent_before = client.stats["requests"]
    pool = [f"step {i}" for i in range(12)]
    rng = random.Random(0)
    try:
        for _ in range(30):   # the same keys again and again while their labels are pending
            labeler.annotate(rng.choices(pool, k=6))
            time.sleep(0.05)
        labeler.annotate(pool)
        wait_for(lambda: labeler.stats()["pending"] == 0)
        stats = labeler.stats()
        assert stats["judge_prompts"] == stats["labeled"] == len(labeler.model.table) == 12
        assert labeler._client is client and stats["judge_failures"] == 0
        assert client.stats["requests"] - sent_before == 12        # HTTP requests, retries included
        assert stats["table_version"] == stats["judge_calls"] >= 3      # one merge per batch
        rewards, labeled = labeler.annotate(pool)
        assert all(labeled) and set(rewards) <= {0.0, 1.0}
        assert labeler.stats()["enqueued"] == 12
    finally:
        labeler.close()


def test_a_full_queue_drops_the_oldest_and_annotate_never_waits(slow_judge, caplog):
    labeler = judged(slow_judge, batch_size=2, max_pending=3)
    try:
        labeler.annotate(["first"])
        wait_for(lambda: labeler.stats()["in_flight"] == 1)   # the judge is busy for 0.5 s
        with caplog.at_level(logging.WARNING, logger="rewardmill.labeler"):
            for i in range(5):
                start = time.perf_counter()
                labeler.annotate([f"key {i}-{j}" for j in range(4)])
                assert time.perf_counter() - start < 0.05
        stats = labeler.stats()
        assert stats["queue_depth"] == 3 and stats["dropped"] == 20 - 3
        assert list(labeler.queue) == ["key 4-1", "key 4-2", "key 4-3"]   # the newest kept
        drops = [r for r in caplog.records if "queue full" in r.getMessage()]
        assert len(drops) == 1                                          # rate-limited
        wait_for(lambda: labeler.stats()["pending"] == 0)
        assert set(labeler.model.table) == {"first", "key 4-1", "key 4-2", "key 4-3"}
        labeler.annotate(["key 0-0"])          # dropped, never labeled: queued again when seen
        assert labeler.stats()["enqueued"] == 1 + 20 + 1
    finally:
        labeler.close()


def test_batches_are_newest_first_and_late_labels_are_used_at_once(slow_judge):
    labeler = judged(slow_judge, batch_size=2, default=-1.0)
    try:
        start = time.perf_counter()
        assert labeler.annotate(["a"]) == ([-1.0], [False])     # unlabeled: the default, at once
        assert time.perf_counter() - start < 0.05
        wait_for(lambda: labeler.stats()["in_flight"] == 1)
        labeler.annotate(["b", "c", "d", "e"])
        wait_for(lambda: labeler.stats()["labeled"] >= 1)
        [ra], [la] = labeler.annotate(["a"])    # the first call after the label arrived uses it
        assert la and ra in (0.0, 1.0) and time.perf_counter() - start >= LATENCY_S
        wait_for(lambda: labeler.stats()["pending"] == 0)
        assert list(labeler.model.table) == ["a", "e", "d", "c", "b"]   # newest first, by 2
        assert labeler.stats()["table_version"] == 3
    finally:
        labeler.close()


def test_a_source_with_its_own_labeler_trains_a_classifier_from_the_judge(slow_judge):
    source = OniReward(key="step", context="none", beta=3.0, labeler="no-such-labeler",
                       url=slow_judge, kind="classification", max_tokens=4, retries=0,
                       batch_size=8, train_steps=4, train_batch=8, lr=1e-3)
    samples = [toy_sample(["7+5=12", "4+8+1=13", "7+5=12"]), toy_sample(["3+2+1=6", "#632"])]
    try:
        assert source(samples) == [0.0, 0.0]                   # nothing labeled yet: default 0
        labeler = source.labeler
        wait_for(lambda: labeler.stats()["model_version"] >= 1)
        stats = labeler.stats()
        assert stats["labeled"] == 4 and stats["train_rounds"] == 1 and stats["judge_calls"] == 1
        r, _ = labeler.annotate(["7+5=12", "4+8+1=13", "3+2+1=6", "#632"])
        assert source(samples) == pytest.approx([r[0] + r[1] + r[0] / 8, r[2] + r[3]])
        assert set(source.state_dict()["labeler"]["model"]["table"]) == {
            "7+5=12", "4+8+1=13", "3+2+1=6", "#632"}
    finally:
        source.close()
