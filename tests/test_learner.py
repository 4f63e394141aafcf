"""The learner on 1 and 2 FSDP2 ranks (a real local Ray instance for the second)."""
import random

import pytest
import torch

from core.models import build_tiny_policy, load_policy, load_tokenizer
from core.records import Sample
from learners.prepare import BatchRecipe, build_sft_batch, build_train_batch
from orchestrator.cluster import Cluster, Ready
from orchestrator.learner_group import LearnerGroup

ARCH = dict(model_type="qwen2", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, intermediate_size=64, max_position_embeddings=64,
            tie_word_embeddings=True)
SETTINGS = dict(lr=1e-3, mini_batch_size=8, micro_batch_size=2, epochs=2, kl_coef=0.1,
                entropy_coef=0.01, threads=1)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return str(build_tiny_policy(tmp_path_factory.mktemp("m") / "tiny", ARCH, seed=0))


def _batch(base, aggregation):
    rng = random.Random(0)
    samples = []
    for i in range(16):
        n = rng.randint(1, 9)
        samples.append(Sample(prompt_id=str(i // 4), group_id=str(i // 4),
                              prompt_ids=[rng.randint(3, 60) for _ in range(rng.randint(2, 5))],
                              response_ids=[rng.randint(3, 60) for _ in range(n)],
                              behaviour_logprobs=[-4.0] * n, policy_version=0,
                              reward=float(rng.random() > 0.5)))
    recipe = BatchRecipe(estimator="grpo", loss_aggregation=aggregation, mini_batch_size=8,
                         max_new_tokens=9)
    return build_train_batch(samples, recipe, pad_id=0)[0]


def _train(cluster, base, ranks, batch):
    group = LearnerGroup(cluster, base, SETTINGS, ranks, use_reference=True)
    metrics = group.train_step(cluster.put(batch))
    state = cluster.get(group.state_future())
    group.shutdown()
    return metrics, state


@pytest.mark.parametrize("aggregation", ["seq-mean-token-mean"])
def test_two_ranks_give_the_same_update_as_one(base, aggregation):
    batch = _batch(base, aggregation)
    one_metrics, one = _train(Cluster("inline"), base, 1, batch)
    cluster = Cluster("local", num_cpus=4)
    try:
        two_metrics, two = _train(cluster, base, 2, batch)
    finally:
        cluster.shutdown()
    start = load_policy(base).state_dict()
    assert any(not torch.equal(one[k], start[k]) for k in one)  # it did learn something
    for k in one:
        assert torch.allclose(one[k], two[k], atol=1e-5), k
    for k in ("loss", "pg_loss", "kl", "entropy", "clip_fraction"):
        assert one_metrics[k] == pytest.approx(two_metrics[k], abs=1e-5), k
    assert one_metrics["optimizer_steps"] == 4  # 2 mini-batches x 2 epochs


def test_sft_lowers_the_loss(base):
    tok = load_tokenizer(base)
    prompts = [tok("12+3=")["input_ids"]] * 8
    targets = [tok("2+3=5;1+0=1;#15")["input_ids"] + [tok.eos_token_id]] * 8
    batch = Ready(build_sft_batch(prompts, targets, tok.pad_token_id))
    group = LearnerGroup(Cluster("inline"), base, {**SETTINGS, "lr": 1e-2}, 1,
                         use_reference=False)
    losses = [group.sft_step(batch)["sft_loss"] for _ in range(20)]
    group.shutdown()
    assert losses[-1] < 0.5 * losses[0]
