"""Batch composition in the main job, lock-step and streaming: RoRecomp's extra optimizer
steps, SCOPE's repair stage, prompt pairing and the curriculum, each chosen by config, with
their counters in metrics.jsonl."""
import json

from orchestrator.main import run
from tests.conftest import compose

# SCOPE with sources that make every response of two or more steps salvageable and every
# guide continuation verify (tests/reward_fns.py): a random tiny model writes no right sum, and
# the path under test is the stage, not the guide's skill
SCOPE = ["buffer.repair.prm_source=prm", "buffer.repair.verify_source=correct",
         "reward.sources=[{name: correct, fn: tests.reward_fns.accepts_continuations}, "
         "{name: prm, fn: tests.reward_fns.first_step_right, granularity: step, weight: 0.0}]",
         "eval.accuracy_source=correct", "rollout.max_new_tokens=40"]


def _rows(tmp_path, run_name):
    path = tmp_path / "outputs" / "toy_arith" / run_name / "metrics.jsonl"
    return [r for r in map(json.loads, path.read_text().splitlines()) if "train/loss" in r]


def test_rorecomp_adds_compensation_steps_in_the_lock_step_loop(tmp_path):
    cfg = compose(tmp_path, "cluster=inline", "buffer=rorecomp", "buffer.rorecomp.p_comp=1.0",
                  "steps=3")
    run(cfg)
    rows = _rows(tmp_path, "grpo-seed0")
    assert len(rows) == 3
    # every group leaves at least one response behind: after two steps of 4 groups the
    # compensation buffer (capacity 0.5 x 16 = 8) has been trained at least once
    assert sum(r["recompose/compensation_samples"] for r in rows) >= 8
    for r in rows:
        assert r["train/optimizer_steps"] == r["recompose/optimizer_steps"]
        assert r["recompose/priority_samples"] >= 8          # ceil(alpha x side) per group
        assert r["buffer/served_groups"] > 0 and "rorecomp/waiting_samples" in r


def test_scope_repairs_and_prompt_pairing_in_the_lock_step_loop(tmp_path):
    cfg = compose(tmp_path, "cluster=inline", "buffer=scope", *SCOPE, "algorithm=weighted_grpo",
                  "algorithm.estimator_options.reading=pooled", "buffer.prompts.kind=pairing",
                  "steps=3")
    run(cfg)
    rows = _rows(tmp_path, "weighted_grpo-seed0")
    last = rows[-1]
    assert last["repair/attempted"] > 0 and last["repair/repaired"] == last["repair/attempted"]
    assert sum(r["rollout/repaired_fraction"] for r in rows) > 0
    assert "train/clip_fraction" in last and 0 <= last["rollout/diversity"] <= 1
    assert last["prompts/pool_size"] > 0 and last["prompts/fresh"] > 0


def test_the_stages_stream_with_rorecomp_scope_and_a_curriculum(tmp_path):
    """Real local Ray, async: rollout -> reward -> repair -> buffer units, RoRecomp on top,
    a resumed run picking up the compensation buffer and the prompt statistics."""
    common = ["buffer=[scope,rorecomp]", *SCOPE, "scheduler.mode=async", "buffer.max_staleness=1",
              "buffer.prompts.kind=curriculum",
              "buffer.prompts.min_attempts=1"]
    run(compose(tmp_path, *common, "steps=2"))
    summary = run(compose(tmp_path, *common, "steps=3", "resume=true"))
    assert summary["steps"] == 3
    rows = _rows(tmp_path, "grpo-seed0")
    assert [r["step"] for r in rows][-1] == 3
    last = rows[-1]
    assert last["repair/attempted"] > 0 and last["recompose/priority_samples"] > 0
    assert last["prompts/reused"] > 0          # known prompts drawn again after the resume
    assert "busy/repair" in last
