"""The learner's part of the config schema, where each field's default, range and meaning live.

`LearnerConfig` is the `learner:` group (conf/learner/); `PolicyLossConfig` holds the fields of
`algorithm:` (conf/algorithm/) that a learner rank reads. orchestrator/schema.py builds the
whole config tree from these, and `LearnerSettings` (learners/worker.py) is made of these very
fields, so a learner rank and the config cannot disagree on a default.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from core.schema import checked


@dataclass
class LearnerConfig:
    """Learner ranks: torch.distributed (gloo on CPU, NCCL on GPU) with FSDP2 sharding the policy.
    Batch sizes count responses (rows)."""

    strategy: str = checked("fsdp2", choices=("fsdp2", "none"))  # fsdp2: shard over the ranks (a
                                               # single rank holds whole weights: sharding over one
                                               # only copies) | none (one rank, no sharding)
    num_ranks: int = checked(1, ge=1)          # learner processes; each takes an equal share of every
                                               # mini-batch
    lr: float = checked(1.0e-5, gt=0, le=1)    # AdamW learning rate
    weight_decay: float = 0.0                  # AdamW decoupled weight decay
    warmup_steps: int = 0                      # optimizer steps of linear learning-rate warm-up
    max_grad_norm: float = checked(1.0, gt=0)  # global gradient-norm clip
    mini_batch_size: int = checked(256, ge=1)  # responses per optimizer step, all ranks together; must
                                               # divide data.prompts_per_step x
                                               # rollout.responses_per_prompt
    micro_batch_size: int = checked(64, ge=1)  # responses per forward/backward on one rank (gradient
                                               # accumulation)
    micro_batch_tokens: Optional[int] = checked(None, ge=1)  # instead of micro_batch_size: tokens per
                                               # forward/backward on one rank, counted as rows x
                                               # (longest prompt + longest response) after padding; rows
                                               # are sorted by length and packed to fit, a longer row
                                               # runs alone (learners/micro_batches.py)
    epochs: int = checked(1, ge=1)             # passes over each rollout batch
    logit_chunk_tokens: int = checked(1024, ge=1)  # response tokens whose full-vocabulary logits exist
                                               # at once (log-probs, entropy; checkpointed): extra
                                               # memory ~3 x this x vocab x 4 bytes
    gradient_checkpointing: bool = False       # true: keep only each layer's input, recompute its
                                               # activations in backward (less memory for long
                                               # responses, ~1/3 more compute)
    compile: bool = False                      # torch.compile each transformer block (inductor,
                                               # dynamic shapes): fuses the element-wise work around
                                               # the matmuls. Toy learner step on 1 CPU thread in bf16:
                                               # 1.17 -> 0.63 s. The first step pays the compile (CPU:
                                               # 10-100 s; kernels are cached in
                                               # /tmp/torchinductor_$USER for later runs)
    threads: int = 2                           # torch threads per rank on CPU; 0 leaves torch's default
    nice: Optional[int] = checked(None, ge=-20, le=19)  # OS scheduling niceness of each rank's process
                                               # (-20 first .. 19 last); null keeps the one it started
                                               # with (Ray starts its workers at 15). Async mode on a CPU
                                               # box: 0 gives the learner the cores whenever it computes
                                               # and the rollout workers (15) what it leaves, so
                                               # learner.threads can be the core count
    num_cpus: float = 1                        # Ray CPUs reserved per rank
    num_gpus: float = 0                        # Ray GPUs per rank (1 on a GPU cluster)


@dataclass
class CriticConfig:
    """Value model for GAE (PPO), with its own optimizer."""

    enabled: bool = False                      # train a critic (algorithm=ppo)
    lr: float = 1.0e-5                         # critic AdamW learning rate
    value_clip: Optional[float] = 0.2          # clip of V around its old value in the critic loss; null
                                               # = off


@dataclass
class PolicyLossConfig:
    """The fields of `algorithm:` a learner rank reads: the policy loss and its regularisers.
    Paper references: PPO arXiv:1707.06347, GRPO arXiv:2402.03300."""

    loss: str = "ppo"                          # policy loss (learners/losses.py registry or dotted
                                               # path); ppo: the clipped PPO loss (options:
                                               # conf/algorithm/_ppo.yaml)
    loss_options: Dict[str, Any] = field(default_factory=dict)  # keyword arguments of the loss (its
                                               # docstring); each must be a parameter of the loss
                                               # function
    kl_coef: float = checked(0.0, ge=0)        # beta of KL(pi || pi_ref) as a loss term (DeepSeekMath:
                                               # 0.04); > 0 loads a reference model
    kl_estimator: str = checked("k3", choices=("k1", "k2", "k3"))  # Schulman's KL estimators (k3 for
                                               # the loss, clamped at 10 as in verl; k1 usual in the
                                               # reward)
    entropy_coef: float = 0.0                  # entropy bonus weight
    recompute_old_logprobs: bool = True        # pi_old from a learner forward pass (false: the
                                               # sampler's log-probs)
    tis_cap: Optional[float] = None            # truncated importance sampling: weight tokens by
                                               # min(pi_old / pi_sampler, cap) (e.g. 2.0); needs
                                               # recompute_old_logprobs. null: 2.0 when
                                               # scheduler.mode=async trains stale samples
                                               # (buffer.max_staleness > 0), else off; 0 = off
    critic: CriticConfig = field(default_factory=CriticConfig)  # value model for GAE (PPO)
