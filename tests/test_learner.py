"""The learner on 1 and 2 FSDP2 ranks (a real local Ray instance for the second): every loss
path takes the same step on both, as the maths says it must."""
import copy
import random

import pytest
import torch

from core.models import build_tiny_policy, load_policy, load_tokenizer
from core.records import Batch, Sample
from learners.micro_batches import token_micro_batches
from learners.prepare import build_pair_batch, build_sft_batch, build_train_batch
from orchestrator.cluster import Cluster, Ready
from orchestrator.learner_group import LearnerGroup
from orchestrator.main import learner_settings, uses_reference
from orchestrator.scheduler import Scheduler, batch_recipe
from tests.conftest import compose

ARCH = dict(model_type="qwen2", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, intermediate_size=64, max_position_embeddings=64,
            tie_word_embeddings=True)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return str(build_tiny_policy(tmp_path_factory.mktemp("m") / "tiny", ARCH, seed=0))


@pytest.fixture(scope="module")
def ray_cluster():
    cluster = Cluster("local", num_cpus=4)
    yield cluster
    cluster.shutdown()


def _samples():
    rng = random.Random(0)
    samples = []
    for i in range(16):
        n = rng.randint(1, 9)
        samples.append(Sample(prompt_id=str(i // 4), group_id=str(i // 4),
                              prompt_ids=[rng.randint(3, 60) for _ in range(rng.randint(2, 5))],
                              response_ids=[rng.randint(3, 60) for _ in range(n)],
                              behaviour_logprobs=[-4.0] * n, policy_version=0,
                              reward=float(rng.random() > 0.5)))
    return samples


def _skewed_samples():
    """16 responses of 1-3 or 30-40 tokens; in each mini-batch of 8 the first 4 (rank 0's share
    on 2 ranks) are short and the last 4 long, so token packing differs most between ranks."""
    rng = random.Random(1)
    samples = []
    for i in range(16):
        n = rng.randint(1, 3) if i % 8 < 4 else rng.randint(30, 40)
        samples.append(Sample(prompt_id=str(i // 4), group_id=str(i // 4),
                              prompt_ids=[rng.randint(3, 60) for _ in range(rng.randint(2, 6))],
                              response_ids=[rng.randint(3, 60) for _ in range(n)],
                              behaviour_logprobs=[-4.0] * n, policy_version=0,
                              reward=float(i % 2)))
    return samples


def _train(cluster, base, cfg, ranks, samples=_samples, **settings):
    """One RL step on a fixed batch; returns (metrics, policy weights, annotations)."""
    group = LearnerGroup(cluster, base, {**learner_settings(cfg), "threads": 1, **settings},
                         ranks, use_reference=uses_reference(cfg))
    recipe = batch_recipe(cfg)
    samples = copy.deepcopy(samples())
    needs = Scheduler.annotation_needs_of(recipe)
    annotations = {}
    if needs:
        plain = cluster.put(Batch.from_samples(samples, 0))
        annotations = group.run("annotate", plain, needs)[0]
    batch, _ = build_train_batch(samples, recipe, 0, annotations)
    metrics = group.train_step(cluster.put(batch))
    state = cluster.get(group.state_future())
    group.shutdown()
    return metrics, state, annotations


@pytest.mark.parametrize("algorithm", ["grpo", "gspo", "rover", "pacs", "ppo", "reinforce_pp"])
def test_two_ranks_take_the_same_step_as_one(tmp_path, base, ray_cluster, algorithm):
    cfg = compose(tmp_path, f"algorithm={algorithm}", "learner.mini_batch_size=8",
                  "learner.micro_batch_size=4", "learner.epochs=2", "learner.lr=1e-3",
                  "algorithm.entropy_coef=0.01", "algorithm.kl_coef=0.1",
                  "rollout.max_new_tokens=9")
    one_metrics, one, one_ann = _train(Cluster("inline"), base, cfg, 1)
    two_metrics, two, two_ann = _train(ray_cluster, base, cfg, 2)
    start = load_policy(base).state_dict()
    assert any(not torch.equal(one[k], start[k]) for k in one)  # it did learn something
    for k in one:
        assert torch.allclose(one[k], two[k], atol=1e-5), k
    for k in one_ann:
        assert torch.allclose(one_ann[k], two_ann[k], atol=1e-5), k
    for k, v in one_metrics.items():
        if k not in ("grad_norm",):
            assert v == pytest.approx(two_metrics[k], abs=1e-5), k
    assert one_metrics["optimizer_steps"] == 4  # 2 mini-batches x 2 epochs


def test_sft_lowers_the_loss(base, tmp_path):
    tok = load_tokenizer(base)
    prompts = [tok("12+3=")["input_ids"]] * 8
    targets = [tok("2+3=5;1+0=1;#15")["input_ids"] + [tok.eos_token_id]] * 8
    batch = Ready(build_sft_batch(prompts, targets, tok.pad_token_id))
    settings = {**learner_settings(compose(tmp_path)), "lr": 1e-2, "threads": 1}
    group = LearnerGroup(Cluster("inline"), base, settings, 1, use_reference=False)
    # over model seeds 0-3 the last loss is 0.13-0.24 of the first (20 steps: 0.31-0.40)
    losses = [group.sft_step(batch)["sft_loss"] for _ in range(30)]
    group.shutdown()
    assert losses[-1] < 0.5 * losses[0]


def test_memory_savers_take_the_same_step(tmp_path, base):
    """Gradient checkpointing and a 3-token logit chunk (many checkpointed chunks) change what
    is kept in memory, not the step."""
    common = ["algorithm=grpo", "learner.mini_batch_size=8", "learner.micro_batch_size=4",
              "learner.lr=1e-3", "algorithm.entropy_coef=0.01", "rollout.max_new_tokens=9"]
    plain_metrics, plain, _ = _train(Cluster("inline"), base, compose(tmp_path, *common), 1)
    saved_metrics, saved, _ = _train(Cluster("inline"), base, compose(
        tmp_path, *common, "learner.gradient_checkpointing=true", "learner.logit_chunk_tokens=3"), 1)
    for k in plain:
        assert torch.allclose(plain[k], saved[k], atol=1e-6), k
    for k in ("loss", "entropy", "policy_loss"):
        assert plain_metrics[k] == pytest.approx(saved_metrics[k], abs=1e-6), k


TOKEN_COMMON = ["learner.mini_batch_size=8", "learner.micro_batch_size=4", "learner.epochs=2",
                "learner.lr=1e-3", "algorithm.entropy_coef=0.01", "rollout.max_new_tokens=40"]


def _same_step(a, b, atol=1e-5):
    (a_metrics, a_state, _), (b_metrics, b_state, _) = a, b
    for k in a_state:
        assert torch.allclose(a_state[k], b_state[k], atol=atol), k
    for k, v in a_metrics.items():
        if k != "grad_norm":
            assert v == pytest.approx(b_metrics[k], abs=atol), k


@pytest.mark.parametrize("algorithm, extra", [("grpo", ["algorithm.kl_coef=0.1"]),
                                              ("ppo", []),      # critic values, GAE
                                              ("pacs", [])])    # whole groups per micro-batch
def test_a_token_budget_takes_the_same_step_as_rows(tmp_path, base, algorithm, extra):
    """Packing by length (45 tokens: 3 short rows share a forward, a 40-token row runs alone,
    over budget) changes what runs together, not the step: the loss weights are fixed per
    mini-batch, so the micro-batch losses sum to the same whole."""
    cfg = compose(tmp_path, f"algorithm={algorithm}", *TOKEN_COMMON, *extra)
    rows = _train(Cluster("inline"), base, cfg, 1, _skewed_samples)
    tokens = _train(Cluster("inline"), base, cfg, 1, _skewed_samples, micro_batch_tokens=45)
    start = load_policy(base).state_dict()
    assert any(not torch.equal(rows[1][k], start[k]) for k in start)
    _same_step(rows, tokens)


def test_compiled_blocks_take_the_same_step(tmp_path, base):
    """learner.compile=true (torch.compile of each transformer block, dynamic shapes) fuses
    element-wise work; micro-batches of 1 to 3 rows and of different lengths take the step
    the eager model takes."""
    cfg = compose(tmp_path, "algorithm=grpo", "learner.mini_batch_size=16", "learner.lr=1e-3",
                  "rollout.max_new_tokens=40")
    eager_metrics, eager, _ = _train(Cluster("inline"), base, cfg, 1, _skewed_samples,
                                     micro_batch_tokens=45)
    compiled_metrics, compiled, _ = _train(Cluster("inline"), base, cfg, 1, _skewed_samples,
                                           micro_batch_tokens=45, compile=True)
    for k in ("loss", "entropy", "logprob_mismatch"):   # the forward passes, before the update
        assert compiled_metrics[k] == pytest.approx(eager_metrics[k], abs=1e-5), k
    # fused kernels round differently; Adam's first step, lr x sign(gradient), flips the sign
    # on weights whose gradient is near zero, so the updates agree in direction, not exactly
    start = load_policy(base).state_dict()
    moved = [torch.cat([(w[k] - start[k]).flatten() for k in start]) for w in (eager, compiled)]
    assert torch.nn.functional.cosine_similarity(*moved, dim=0) > 0.99


def test_two_ranks_with_uneven_lengths_agree_on_micro_batches(tmp_path, base, ray_cluster):
    """Rank 0 holds only short rows (one forward fits them), rank 1 only long ones (one
    forward each): rank 0 splits to rank 1's count, so FSDP's collectives pair up, and the
    step is the 1-rank step."""
    rows = Batch.from_samples(_skewed_samples(), 0)
    own_counts = [len(token_micro_batches(rows.select(slice(r * 4, r * 4 + 4)), 45, "row"))
                  for r in (0, 1)]
    assert own_counts == [1, 4]   # left alone, rank 0 would run 1 forward to rank 1's 4
    cfg = compose(tmp_path, "algorithm=grpo", *TOKEN_COMMON, "algorithm.kl_coef=0.1")
    one = _train(Cluster("inline"), base, cfg, 1, _skewed_samples, micro_batch_tokens=45)
    two = _train(ray_cluster, base, cfg, 2, _skewed_samples, micro_batch_tokens=45)
    _same_step(one, two)
    assert two[0]["optimizer_steps"] == 4


def test_a_token_budget_keeps_preference_pairs_whole(tmp_path, base):
    """SimPO over pairs whose lengths differ a lot: packing by tokens keeps each chosen /
    rejected pair in one micro-batch and takes the row path's step."""
    rng = random.Random(2)
    prompts, chosen, rejected = [], [], []
    for k in range(4):
        prompts.append([rng.randint(3, 60) for _ in range(rng.randint(2, 6))])
        chosen.append([rng.randint(3, 60) for _ in range(rng.choice([2, 30]))])
        rejected.append([rng.randint(3, 60) for _ in range(rng.choice([3, 35]))])
    batch = Ready(build_pair_batch(prompts, chosen, rejected, 0))
    settings = {**learner_settings(compose(tmp_path)), "lr": 1e-3, "threads": 1,
                "preference_loss": "simpo", "micro_batch_size": 2}
    out = []
    for extra in ({}, {"micro_batch_tokens": 50}):
        group = LearnerGroup(Cluster("inline"), base, {**settings, **extra}, 1,
                             use_reference=False)
        metrics = group.run("preference_step", batch)[0]
        out.append((metrics, _policy_state(group), None))
        group.shutdown()
    _same_step(*out)


def _policy_state(group):
    return group.cluster.get(group.state_future())


def test_bf16_on_one_cpu_rank_is_mixed_precision_near_the_fp32_step(tmp_path, base):
    """model.dtype=bfloat16 on one unsharded rank: matmuls in bf16 under autocast, weights
    and optimizer in fp32, attention in fp32 on CPU (learners/precision.py). The step is the
    fp32 step up to bf16 rounding: close, but not equal."""
    cfg = compose(tmp_path, "algorithm=grpo", "learner.mini_batch_size=8",
                  "learner.micro_batch_size=4", "learner.lr=1e-3", "rollout.max_new_tokens=9")
    fp32_metrics, fp32, _ = _train(Cluster("inline"), base, cfg, 1)
    bf16_metrics, bf16, _ = _train(Cluster("inline"), base, cfg, 1, dtype="bfloat16")
    assert all(v.dtype == torch.float32 for v in bf16.values())   # fp32 master weights
    assert any(not torch.equal(fp32[k], bf16[k]) for k in fp32)     # bf16 did compute
    start = load_policy(base).state_dict()
    moved = [torch.cat([(w[k] - start[k]).flatten() for k in start]) for w in (fp32, bf16)]
    # Adam moves nearly every weight by about lr, sign(gradient): the signs mostly agree
    assert torch.nn.functional.cosine_similarity(*moved, dim=0) > 0.9
    assert bf16_metrics["entropy"] == pytest.approx(fp32_metrics["entropy"], rel=0.01)
    assert bf16_metrics["loss"] == pytest.approx(fp32_metrics["loss"], abs=1e-4)   # ~4e-4


def test_attention_runs_in_fp32_on_cpu_under_bf16_autocast():
    """torch's CPU flash-attention backward is ~9x slower in bf16: under autocast the
    registered attention still computes in fp32 (its result equals the fp32 one exactly)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from learners.precision import _sdpa_fp32_on_cpu
    module = torch.nn.Module()
    module.is_causal, module.num_key_value_groups = True, 1
    q, k, v = (torch.randn(2, 2, 5, 8) for _ in range(3))
    want, _ = sdpa_attention_forward(module, q, k, v, None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, _ = _sdpa_fp32_on_cpu(module, q, k, v, None)
        lowered, _ = sdpa_attention_forward(module, q, k, v, None)
    assert lowered.dtype == torch.bfloat16           # what plain SDPA does under autocast
    assert got.dtype == torch.float32 and torch.equal(got, want)
