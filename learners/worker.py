"""One learner rank: a torch.distributed process holding FSDP2 shards of the policy (and of
the reference model and critic, when the algorithm uses them).

The rank is algorithm-blind: batches arrive with per-token `advantages` and `loss_weights`
already computed (learners/advantages.py, learners/prepare.py); it applies the configured
policy loss (learners/losses.py) and minimises, over each global mini-batch,
    loss + kl_coef * sum(w * KL) - entropy_coef * sum(w * entropy).
The loss weights sum over the whole mini-batch, so rank r sums its own rows and FSDP's
gradient averaging is undone by scaling with the world size: 1 and N ranks take the same step.
For the same reason how rows are grouped into micro-batches (a row count, or a token budget:
learners/micro_batches.py) changes memory and speed, not the step.
With LaSeR (`laser` settings) the same forward pass also reads log pi(z_c | x, y) right after
each response and adds alpha * MSE(r_s, r_v) (learners/losses.py laser_aux_loss).
"""
from __future__ import annotations

import itertools
import json
import os
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist

from core.cpu import keep_freed_memory, set_niceness
from core.models import (copy_tokenizer, decoder_blocks, load_policy, load_reward_model,
                         load_tokenizer)
from core.net import node_address
from core.records import Batch
from core.registry import lookup
from learners.losses import (LaserLoss, LossInputs, kl_estimate, laser_aux_loss, loss_needs,
                             value_loss)
from learners.config import CriticConfig, LearnerConfig, PolicyLossConfig
from learners.micro_batches import by_rows, mini_batch_rows, token_micro_batches, without_padding
from learners.precision import attention_in_fp32_on_cpu, autocast
from learners.token_stats import chunked_token_stats
from core.preference_losses import bradley_terry_loss, dpo_loss, simpo_loss

# HF heads return a slice of their output; nothing here modifies it in place.
warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")


@dataclass
class LearnerSettings(PolicyLossConfig, LearnerConfig):
    """What one learner rank runs with: every field of the `learner:` config (LearnerConfig) and
    the policy-loss fields of `algorithm:` (PolicyLossConfig), whose defaults and meanings are
    in learners/config.py; plus those below. A field with `from` metadata is read from that
    config key (orchestrator/main.py learner_settings); the others are set by the job that
    builds the learner (RL, warm start, preference training)."""

    dtype: str = field(default="float32", metadata={"from": "model.dtype"})  # "bfloat16": FSDP2
                                   # computes in bf16, keeps fp32 master weights
    seed: int = field(default=0, metadata={"from": "seed"})  # init of a fresh reward-model head
                                   # (bradley_terry), every rank alike
    temperature: float = field(default=1.0, metadata={"from": "rollout.temperature"})  # the
                                   # sampler's temperature: log-probs are of logits / T
    betas: tuple = (0.9, 0.999)    # AdamW betas
    laser: dict | None = None      # LaSeR auxiliary loss (learners/losses.py LaserLoss); None = off
    preference_loss: str = "dpo"   # dpo | simpo | bradley_terry (preference_step only);
                                   # bradley_terry trains a scalar reward model, not a policy
    preference_options: dict = field(default_factory=dict)  # keyword arguments of the
                                   # preference loss (beta, gamma, margin)

    def __post_init__(self):
        if isinstance(self.critic, dict):   # settings travel to Ray actors as plain dicts
            self.critic = CriticConfig(**self.critic)


class LearnerWorker:
    """Create one per rank (as a Ray actor or in-process) and call `setup` on all of them."""

    def __init__(self, rank: int, world_size: int, model_path: str, settings: dict,
                 use_reference: bool):
        self.rank, self.world_size = rank, world_size
        self.s = LearnerSettings(**settings)
        self.model_path = model_path
        self.use_reference = use_reference
        self.loss_fn = lookup("loss", self.s.loss)
        self.laser = LaserLoss(**self.s.laser) if self.s.laser else None
        self.laser_c_ref = self.laser.c_ref if self.laser else None
        self.version = 0
        if self.s.threads:
            torch.set_num_threads(self.s.threads)
        if self.s.nice is not None:
            set_niceness(self.s.nice)
        cuda = torch.cuda.is_available()
        self.device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        if not cuda:
            keep_freed_memory()   # a step's activations reuse the last step's pages
        # one rank holds whole weights: FSDP2 would only copy them (learners/precision.py)
        self.sharded = self.s.strategy == "fsdp2" and world_size > 1

    # --- set-up ----------------------------------------------------------------------------

    @staticmethod
    def rendezvous_address() -> tuple[str, int]:
        """Rank 0 answers: its node's IP and a free port for torch.distributed to meet on."""
        return node_address()

    def setup(self, master_addr: str, master_port: int) -> int:
        if not dist.is_initialized():
            os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = master_addr, str(master_port)
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo",
                                    rank=self.rank, world_size=self.world_size)
        # Bradley-Terry trains a reward model: the same body with a one-output score head
        self.loader = (partial(load_reward_model, seed=self.s.seed)
                       if self.s.preference_loss == "bradley_terry" else load_policy)
        self.model = self.loader(self.model_path)
        if self.s.gradient_checkpointing:   # recompute each layer's activations in backward
            self.model.gradient_checkpointing_enable({"use_reentrant": False})
        self.model = self._sharded(self.model)
        self.model.train()
        self.optimizer, self.scheduler = self._optimizer(self.model, self.s.lr)
        self.reference = self.critic = None
        if self.use_reference:
            self.reference = self._sharded(load_policy(self.model_path)).eval()
            self.reference.requires_grad_(False)
        if self.s.critic.enabled:
            self.critic = self._sharded(_load_critic(self.model_path))
            self.critic_optimizer, self.critic_scheduler = self._optimizer(self.critic,
                                                                           self.s.critic.lr)
        if self.laser:
            self.laser_token_id = _token_id(self.model_path, self.laser.token)
        if self.s.compile:
            self._compile_now()
        return self.rank

    def _compile_now(self) -> None:
        """Compile the blocks at set-up rather than at whichever later step first shows a
        new kind of input: torch.compile specialises a one-row batch apart from wider ones,
        and a batch without padding (no attention mask) apart from one with.
        The trained models compile their forward and backward, the reference its forward."""
        models = [(self.model, True), (self.reference, False), (self.critic, True)]
        for model, trains in [(m, trains) for m, trains in models if m is not None]:
            for rows, padded in itertools.product((2, 1), (True, False)):
                ids = torch.zeros(rows, 8, dtype=torch.long, device=self.device)
                mask = torch.ones_like(ids)
                mask[0, :2] = 0 if padded else 1      # left padding, as prompts have
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                with torch.set_grad_enabled(trains), autocast(self.device, self.s.dtype,
                                                              self.sharded):
                    out = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                use_cache=False).logits
                if trains:
                    out.float().sum().backward()
            model.zero_grad(set_to_none=True)

    def _optimizer(self, model, lr):
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=tuple(self.s.betas),
                                      weight_decay=self.s.weight_decay)
        warmup = max(self.s.warmup_steps, 0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda n: min(1.0, (n + 1) / warmup) if warmup else 1.0)
        return optimizer, scheduler

    def _sharded(self, model: torch.nn.Module) -> torch.nn.Module:
        model.to(self.device)
        attention_in_fp32_on_cpu(model, self.device, self.s.dtype)
        if self.sharded:
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
            low = getattr(torch, self.s.dtype)
            mp = MixedPrecisionPolicy(param_dtype=low, reduce_dtype=torch.float32)
            for block in decoder_blocks(model):
                fully_shard(block, mp_policy=mp)
            fully_shard(model, mp_policy=mp)
        if self.s.compile:   # block by block, after sharding, as FSDP2 expects
            for block in decoder_blocks(model):
                block.compile(dynamic=True)
        return model

    # --- forward passes ------------------------------------------------------------------

    def _response_stats(self, model, mb: Batch, names: tuple[str, ...] = ("logprobs",),
                        after_token: int | None = None) -> dict[str, torch.Tensor]:
        """Per response token [b, R] statistics of softmax(logits / T), zero on padding
        (learners/token_stats.py: "logprobs", "entropy", "mean_logsoftmax"). They are computed
        chunk by chunk inside the model's forward, in place of its output layer, so the
        [b, T, V] logits never exist, and FSDP has the layer's weight gathered there. With
        `after_token`, also "after" [b]: log p(after_token) from the raw logits after each
        row's last response token (LaSeR's z_c; no extra position needed)."""
        head = model.get_output_embeddings()
        P = mb.prompt_len
        mask = mb.attention_mask[:, P:].bool().to(self.device)
        targets = mb.input_ids[:, P:].to(self.device)
        chunk = self.s.logit_chunk_tokens

        def stats(hidden: torch.Tensor) -> dict[str, torch.Tensor]:
            flat = chunked_token_stats(hidden[:, P - 1:-1][mask], head.weight, head.bias,
                                       targets[mask], self.s.temperature, chunk, names)
            out = {name: torch.zeros(mask.shape, device=self.device).masked_scatter(mask, v)
                   for name, v in flat.items()}
            if after_token is not None:
                last = P + mask.sum(1) - 1
                rows = torch.arange(len(mb), device=self.device)
                out["after"] = chunked_token_stats(hidden[rows, last], head.weight, head.bias,
                                                   torch.full_like(last, after_token), 1.0,
                                                   chunk)["logprobs"]
            return out

        head.forward = stats
        try:
            return self._forward(model, mb).logits
        finally:
            del head.forward

    def _forward(self, model, mb: Batch):
        """The model's forward over a micro-batch, in the configured compute dtype."""
        with autocast(self.device, self.s.dtype, self.sharded):
            return model(input_ids=mb.input_ids.to(self.device),
                         attention_mask=mb.attention_mask.to(self.device),
                         position_ids=mb.position_ids.to(self.device), use_cache=False)

    def _scores(self, mb: Batch) -> torch.Tensor:
        """A reward model's score of each row (read at its last real token)."""
        return self._forward(self.model, mb).logits[:, 0].float()

    def _values(self, mb: Batch) -> torch.Tensor:
        """Critic values V(s_t) of the state before each response token."""
        return self._forward(self.critic, mb).logits[:, mb.prompt_len - 1:-1, 0].float()

    def _mini_batch_rows(self, batch: Batch) -> list[slice]:
        """Each optimizer step's rows: as the batch's `mini_batch` ids say (their number may
        vary from step to step, e.g. RoRecomp's compensation steps), else mini_batch_size."""
        if "mini_batch" in batch.extras:
            return mini_batch_rows(batch.extras["mini_batch"])
        M = self.s.mini_batch_size
        return [slice(i, i + M) for i in range(0, len(batch), M)]

    def _my_rows(self, batch: Batch) -> Batch:
        """This rank's contiguous share of a global (mini-)batch."""
        per_rank = len(batch) // self.world_size
        return batch.select(slice(self.rank * per_rank, (self.rank + 1) * per_rank))

    def _micro_batch_rows(self, rows: Batch, unit: str = "row") -> list[slice | torch.Tensor]:
        """Row indices of each micro-batch: micro_batch_size rows, or packed by length
        within micro_batch_tokens, never splitting a `unit` (row, pair, group). Collective
        with a token budget: every rank must run the same number of forwards."""
        if self.s.micro_batch_tokens is None:
            return by_rows(len(rows), self.s.micro_batch_size)
        return token_micro_batches(rows, self.s.micro_batch_tokens, unit, self._agreed_count)

    def _micro_batches(self, rows: Batch, unit: str = "row") -> list[Batch]:
        return [self._cut(rows, index) for index in self._micro_batch_rows(rows, unit)]

    def _cut(self, rows: Batch, index: slice | torch.Tensor) -> Batch:
        micro = rows.select(index)
        return micro.trimmed() if self.s.micro_batch_tokens is None else without_padding(micro)

    def _agreed_count(self, count: int, units: int) -> int:
        """The most micro-batches any rank packed; each rank splits up to it. Every rank
        sees the same totals, so if some rank cannot split that far all of them raise
        together rather than leave the others waiting in a collective."""
        if self.world_size == 1:
            return count
        totals = torch.tensor([count, -units], dtype=torch.long, device=self.device)
        dist.all_reduce(totals, op=dist.ReduceOp.MAX)
        most, fewest_units = int(totals[0]), -int(totals[1])
        if most > fewest_units:
            raise ValueError(f"a rank packed {most} micro-batches, but another holds only "
                             f"{fewest_units} units (rows, pairs or groups) to split into")
        return most

    @torch.no_grad()
    def _per_token(self, rows: Batch, what: str) -> dict[str, torch.Tensor]:
        """[n, R] tensors over `rows`, padded to their width: "logprobs" and
        "mean_logsoftmax" of the policy, "ref_logprobs" of the reference, "values"."""
        out: dict[str, torch.Tensor] = {}
        names = {"policy": ("logprobs", "mean_logsoftmax"), "reference": ("ref_logprobs",),
                 "values": ("values",)}[what]
        for name in names:
            out[name] = torch.zeros_like(rows.behaviour_logprobs)
        for index in self._micro_batch_rows(rows):
            mb = self._cut(rows, index)
            r = mb.behaviour_logprobs.shape[1]
            if what == "values":
                out["values"][index, :r] = self._values(mb).cpu()
            else:
                model = self.model if what == "policy" else self.reference
                stats = self._response_stats(model, mb, ("logprobs", "mean_logsoftmax")[:len(names)])
                for name, stat in zip(names, stats.values()):
                    out[name][index, :r] = stat.cpu()
        return out

    def annotate(self, batch: Batch, what: list[str]) -> dict[str, torch.Tensor]:
        """Before advantages are computed: per-token "values" (critic) and/or "ref_logprobs"
        for the whole batch, each rank doing its share; rank 0 returns them all."""
        rows = self._my_rows(batch)
        out = {}
        for item in what:
            kind = {"values": "values", "ref_logprobs": "reference"}[item]
            out[item] = self._gather(self._per_token(rows, kind)[item])
        return out if self.rank == 0 else {}

    def _gather(self, part: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return part
        parts = [torch.zeros_like(part) for _ in range(self.world_size)]
        dist.all_gather(parts, part)
        return torch.cat(parts)

    # --- RL step -------------------------------------------------------------------------

    def train_step(self, batch: Batch) -> dict:
        """One RL step over a rollout batch: `epochs` passes of global mini-batches.

        `batch.extras` holds `advantages` and `loss_weights` [B, R] (each mini-batch's
        weights summing to its whole loss over all ranks), and `returns`/`value_weights`
        when a critic is trained.
        """
        if self.laser and self.laser_c_ref is None:
            self.laser_c_ref = self._recover_c_ref(self._my_rows(batch))
        minis = [self._my_rows(batch.select(rows)) for rows in self._mini_batch_rows(batch)]
        # pi_old is the policy before this step's first update. With one epoch, the first
        # mini-batch's own forward pass (detached) is it, so only the later mini-batches (and
        # every epoch after the first) need a pass of their own, taken before any update.
        from_forward = self.s.recompute_old_logprobs and self.s.epochs == 1
        mismatch = torch.zeros(2)  # sum |learner - sampler| log-prob over sampled tokens, count
        for k, mb in enumerate(minis):
            mismatch += self._prepare_old(mb, policy_pass=not (from_forward and k == 0))
        sums: dict[str, float] = {}
        grad_norms = []
        for epoch in range(self.s.epochs):
            for k, mb in enumerate(minis):
                first = from_forward and epoch == 0 and k == 0
                for name, v in self._accumulate(mb, mismatch if first else None).items():
                    sums[name] = sums.get(name, 0.0) + v
                grad_norms.append(self._optimizer_step())
        self.version += 1
        metrics = self._reduce_metrics(sums, grad_norms)
        if self.world_size > 1:
            dist.all_reduce(mismatch)
        if mismatch[1] > 0:
            # On-policy (same weights) any gap is the sampler and the learner computing
            # differently; with stale samples it also holds the updates since they were sampled.
            metrics["logprob_mismatch"] = float(mismatch[0] / mismatch[1])
        if self.laser_c_ref is not None:
            metrics["laser_c_ref"] = self.laser_c_ref
        return metrics

    @torch.no_grad()
    def _recover_c_ref(self, rows: Batch) -> float | None:
        """The c_ref the rollout-side LaSeR source used (kwargs c_ref: null measures it):
        each sample's log pi(z_c) minus its logged r_s / beta_v, averaged over the batch.
        Exact while the learner holds the weights that sampled the batch, as on the first
        step; then kept (and checkpointed), as the paper keeps c_ref constant. None when the
        source failed on every sample (tried again next step)."""
        total = torch.zeros(2, dtype=torch.float64)
        for mb in self._micro_batches(rows):
            zc = self._response_stats(self.model, mb, after_token=self.laser_token_id)["after"]
            zc = zc.cpu().double()
            implied = zc - mb.extras["laser_rollout_self_reward"].double() / self.laser.beta_v
            anchor = mb.extras["laser_anchor"].double()
            total += torch.stack([(implied * anchor).sum(), anchor.sum()])
        if self.world_size > 1:
            dist.all_reduce(total)
        return float(total[0] / total[1]) if total[1] > 0 else None

    def _prepare_old(self, mb: Batch, policy_pass: bool = True) -> torch.Tensor:
        """pi_old (and what the loss needs of it) for one mini-batch, before any update;
        policy_pass=False: the mini-batch's first training forward supplies pi_old instead.
        Returns (sum |learner - sampler| log-prob over sampled tokens, token count)."""
        mismatch = torch.zeros(2)
        needs_pass = self.s.recompute_old_logprobs or "mean_logsoftmax" in loss_needs(self.loss_fn)
        if policy_pass and needs_pass:
            old = self._per_token(mb, "policy")
            mismatch += self._set_old(mb.extras, mb, old["logprobs"], old["mean_logsoftmax"])
        elif policy_pass:
            mb.extras["old_logprobs"] = mb.behaviour_logprobs
        if self.reference is not None and "ref_logprobs" not in mb.extras:
            mb.extras["ref_logprobs"] = self._per_token(mb, "reference")["ref_logprobs"]
        if self.critic is not None and "old_values" not in mb.extras:
            mb.extras["old_values"] = self._per_token(mb, "values")["values"]
        return mismatch

    def _set_old(self, extras: dict, mb: Batch, logprobs: torch.Tensor,
                 mean_logsoftmax: torch.Tensor | None) -> torch.Tensor:
        """Store pi_old's per-token values (this learner's weights before the update) in
        `extras`, and the truncated importance weight pi_old / pi_sampler when tis_cap is set
        (the decoupled objective: clip around pi_old, correct for the sampler's staleness).
        Returns (sum |learner - sampler| log-prob over sampled tokens, token count)."""
        logprobs = logprobs.detach().to(mb.behaviour_logprobs.device)
        real = mb.attention_mask[:, mb.prompt_len:].float()  # every sampled token
        gap = (logprobs - mb.behaviour_logprobs).abs() * real
        if mean_logsoftmax is not None:
            extras["old_mean_logsoftmax"] = mean_logsoftmax.detach().to(logprobs.device)
        old = logprobs if self.s.recompute_old_logprobs else mb.behaviour_logprobs
        # replayed rows (RoRecomp's compensation steps) keep the pi_old of the step that
        # sampled them, their behaviour log-probs: the ratio and clip measure all the updates since
        replayed = mb.extras.get("replayed")
        if replayed is not None:
            old = torch.where(replayed[:, None] > 0, mb.behaviour_logprobs, old)
        extras["old_logprobs"] = old
        if self.s.tis_cap and self.s.recompute_old_logprobs:
            ratio = torch.exp(old - mb.behaviour_logprobs)
            extras["tis_weight"] = ratio.clamp(max=self.s.tis_cap)
        return torch.stack([gap.sum(), real.sum()])

    def _accumulate(self, rows: Batch, old_from_forward: torch.Tensor | None = None
                    ) -> dict[str, float]:
        """Forward/backward every micro-batch of this rank's rows; returns weighted sums.
        With `old_from_forward` (a mismatch accumulator) pi_old is taken from these very
        forward passes, before this mini-batch's update, and the mismatch is added to it."""
        sums: dict[str, float] = {}
        needs = loss_needs(self.loss_fn)
        micros = self._micro_batches(rows, "group" if "whole_groups" in needs else "row")
        needs_mls = "mean_logsoftmax" in needs
        with_laser = self.laser is not None and self.laser_c_ref is not None
        for k, mb in enumerate(micros):
            self._sync_gradients(k == len(micros) - 1)
            token = self._response_stats(
                self.model, mb, ("logprobs", "entropy") + (("mean_logsoftmax",) if needs_mls else ()),
                after_token=self.laser_token_id if with_laser else None)
            logprobs, entropy = token["logprobs"], token["entropy"]
            if old_from_forward is not None:
                old_from_forward += self._set_old(
                    mb.extras, mb, logprobs.cpu(),
                    token["mean_logsoftmax"].cpu() if needs_mls else None)
            x = {name: v.to(self.device) for name, v in mb.extras.items()}
            if needs_mls:
                x["mean_logsoftmax"] = token["mean_logsoftmax"]
            w, tw = x["loss_weights"], x["token_weights"]
            inputs = LossInputs(logprobs, x["old_logprobs"], x["advantages"], w,
                                mb.response_mask.to(self.device), x)
            loss, per_token = self.loss_fn(inputs, **self.s.loss_options)
            # monitored values: means over trained tokens, whatever the loss aggregation
            stats = {"policy_loss": loss, "entropy": (tw * entropy).sum()}
            for name, v in per_token.items():
                stats[name] = (tw * (v[:, None] if v.dim() == 1 else v)).sum()
            if self.s.entropy_coef:
                loss = loss - self.s.entropy_coef * (w * entropy).sum()
            if self.reference is not None and self.s.kl_coef:
                kl = kl_estimate(logprobs, x["ref_logprobs"], self.s.kl_estimator)
                stats["kl"] = (tw * kl).sum()
                loss = loss + self.s.kl_coef * (w * kl).sum()
            if self.critic is not None:
                stats["value_loss"] = value_loss(self._values(mb), x["old_values"], x["returns"],
                                                 x["value_weights"], self.s.critic.value_clip)
                loss = loss + stats["value_loss"]
            if with_laser:
                aux, laser_stats = self._laser_term(token["after"], x)
                stats.update(laser_stats)
                if self.version >= self.laser.start_step:   # after the reasoning warm-up
                    loss = loss + self.laser.coef * aux
            stats["loss"] = loss
            (loss * self.world_size).backward()
            for name, v in stats.items():
                sums[name] = sums.get(name, 0.0) + float(v.detach())
        return sums

    def _laser_term(self, zc: torch.Tensor, x: dict) -> tuple[torch.Tensor, dict]:
        """LaSeR's MSE for one micro-batch (with gradient) from zc = log pi(z_c) after each
        response, and its monitored sums: the MSE, the mean r_s, and the self-verification
        accuracy 1[r_s > 0.5] == 1[r_v >= 0.5] over the responses the loss counts (LaSeR
        reads r_s > 0.5 as "correct")."""
        aux, self_rewards = laser_aux_loss(zc, x["laser_verifier"], x["laser_loss_weights"],
                                           self.laser_c_ref, self.laser.beta_v)
        counted, r_s = x["laser_count_weights"], self_rewards.detach()
        agree = ((r_s > 0.5) == (x["laser_verifier"] >= 0.5)).float()
        return aux, {"laser_loss": aux, "laser_self_reward": (counted * r_s).sum(),
                     "laser_accuracy": (counted * agree).sum()}

    def _sync_gradients(self, sync: bool) -> None:
        for model in (self.model, self.critic):
            if model is not None and hasattr(model, "set_requires_gradient_sync"):
                model.set_requires_gradient_sync(sync)

    def _optimizer_step(self) -> float:
        if self.critic is not None:
            self._clip_and_step(self.critic, self.critic_optimizer, self.critic_scheduler)
        return self._clip_and_step(self.model, self.optimizer, self.scheduler)

    def _clip_and_step(self, model, optimizer, scheduler) -> float:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), self.s.max_grad_norm)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def _reduce_metrics(self, sums: dict[str, float], grad_norms: list[float]) -> dict:
        """Mean per optimizer step of each weighted sum, over all ranks."""
        names = sorted(sums)
        totals = torch.tensor([sums[k] for k in names], dtype=torch.float64)
        if self.world_size > 1:
            dist.all_reduce(totals)
        steps = max(len(grad_norms), 1)
        out = {k: float(v) / steps for k, v in zip(names, totals)}
        out["grad_norm"] = sum(grad_norms) / steps
        out["lr"] = self.optimizer.param_groups[0]["lr"]
        out["optimizer_steps"] = len(grad_norms)
        return out

    # --- supervised and preference steps --------------------------------------------------

    def sft_step(self, batch: Batch) -> dict:
        """One supervised step: minimise sum(loss_weights * -log p(token)) over the batch."""
        total = torch.zeros(1)
        micros = self._micro_batches(self._my_rows(batch))
        for k, mb in enumerate(micros):
            self._sync_gradients(k == len(micros) - 1)
            logprobs = self._response_stats(self.model, mb)["logprobs"]
            loss = -(mb.extras["loss_weights"].to(self.device) * logprobs).sum()
            (loss * self.world_size).backward()
            total += loss.detach().cpu()
        norm = self._optimizer_step()
        if self.world_size > 1:
            dist.all_reduce(total)
        return {"sft_loss": float(total), "grad_norm": norm}

    def preference_step(self, batch: Batch, train: bool = True) -> dict:
        """One offline preference step (DPO or SimPO) over pairs: rows 2k, 2k+1 are the
        chosen and rejected response of pair k. Micro-batch sizes must be even
        (a token budget packs whole pairs).
        With `train=False` it only measures (loss, margin, accuracy) on the pairs."""
        sums = torch.zeros(4)  # loss, margin, margin > 0, chosen likelier per token
        micros = self._micro_batches(self._my_rows(batch), "pair")
        pairs = len(batch) // 2
        for k, mb in enumerate(micros):
            self._sync_gradients(k == len(micros) - 1)
            mask = mb.response_mask.to(self.device)
            with torch.set_grad_enabled(train):
                if self.s.preference_loss == "bradley_terry":
                    seq = self._scores(mb)   # one scalar per response
                else:
                    seq = (self._response_stats(self.model, mb)["logprobs"] * mask).sum(1)
            if self.s.preference_loss == "bradley_terry":
                loss, margin = bradley_terry_loss(seq[0::2], seq[1::2], **self.s.preference_options)
            elif self.s.preference_loss == "dpo":
                with torch.no_grad():
                    ref = (self._response_stats(self.reference, mb)["logprobs"] * mask).sum(1)
                loss, margin = dpo_loss(seq[0::2], seq[1::2], ref[0::2], ref[1::2],
                                        **self.s.preference_options)
            else:
                length = mask.sum(1)
                loss, margin = simpo_loss(seq[0::2], seq[1::2], length[0::2], length[1::2],
                                          **self.s.preference_options)
            total = loss.sum() / pairs
            if train:
                (total * self.world_size).backward()
            per_token = seq.detach() / mask.sum(1)
            sums += torch.stack([total.detach(), margin.detach().sum() / pairs,
                                 (margin.detach() > 0).float().sum() / pairs,
                                 (per_token[0::2] > per_token[1::2]).float().sum() / pairs]).cpu()
        norm = self._optimizer_step() if train else 0.0
        if self.world_size > 1:
            dist.all_reduce(sums)
        loss, margin, right, likelier = sums.tolist()
        # accuracy: implicit reward margin > 0; likelihood_accuracy: the policy gives the
        # chosen response the higher mean log-prob per token (meaningful before training too)
        return {"loss": loss, "margin": margin, "accuracy": right,
                "likelihood_accuracy": likelier, "grad_norm": norm}

    # --- weights and checkpoints ---------------------------------------------------------

    def full_state_dict(self, model=None) -> dict | None:
        """A model's full weights on CPU, on rank 0 (None elsewhere). All ranks must call."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        state = get_model_state_dict(model or self.model, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))
        return state if self.rank == 0 else None

    def save(self, folder: str, tokenizer_path: str) -> None:
        """Write a HF folder (loadable by from_pretrained) plus optimizer, scheduler and each
        rank's RNG state (dropout, if the model has any, draws from it); the critic, if
        any, goes to folder/critic."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(_rng_state(), folder / f"rng_rank{self.rank}.pt")
        self._save_model(self.model, self.optimizer, self.scheduler, folder, tokenizer_path)
        if self.critic is not None:
            self._save_model(self.critic, self.critic_optimizer, self.critic_scheduler,
                             folder / "critic", tokenizer_path)
        if self.rank == 0:
            (folder / "learner_state.json").write_text(json.dumps(
                {"version": self.version, "laser_c_ref": self.laser_c_ref}))
        if self.world_size > 1:
            dist.barrier()

    def save_policy(self, folder: str, tokenizer_path: str) -> None:
        """The HF policy folder only (no optimizer, RNG or critic): what a served judge reloads."""
        state = self.full_state_dict(self.model)
        if self.rank == 0:
            self.model.save_pretrained(folder, state_dict=state)
            copy_tokenizer(tokenizer_path, folder)

    def _save_model(self, model, optimizer, scheduler, folder: Path, tokenizer_path: str):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
        state = self.full_state_dict(model)
        optim = get_optimizer_state_dict(model, optimizer, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))
        if self.rank == 0:
            model.save_pretrained(folder, state_dict=state)
            copy_tokenizer(tokenizer_path, folder)
            torch.save({"optimizer": optim, "scheduler": scheduler.state_dict()},
                       folder / "optimizer.pt")

    def load(self, folder: str) -> int:
        """Restore what `save` wrote; every rank reads the files."""
        folder = Path(folder)
        self._load_model(self.model, self.optimizer, self.scheduler, folder, self.loader)
        if self.critic is not None:
            self._load_model(self.critic, self.critic_optimizer, self.critic_scheduler,
                             folder / "critic", _load_critic)
        rng = folder / f"rng_rank{self.rank}.pt"
        if rng.exists():  # absent when resuming with more ranks than were saved
            _set_rng_state(torch.load(rng, weights_only=False))
        state = json.loads((folder / "learner_state.json").read_text())
        self.version = state["version"]
        if self.laser and self.laser.c_ref is None:   # the recovered c_ref, kept constant
            self.laser_c_ref = state.get("laser_c_ref")
        return self.version

    @staticmethod
    def _load_model(model, optimizer, scheduler, folder: Path, loader) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions, set_model_state_dict, set_optimizer_state_dict)
        full = StateDictOptions(full_state_dict=True)
        # from_pretrained restores tied weights that the safetensors file stores once.
        set_model_state_dict(model, loader(folder).state_dict(), options=full)
        extra = torch.load(folder / "optimizer.pt", weights_only=False)
        set_optimizer_state_dict(model, optimizer, extra["optimizer"], options=full)
        scheduler.load_state_dict(extra["scheduler"])

    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def _load_critic(path) -> torch.nn.Module:
    """The policy's architecture with a scalar head per token: restored from a saved critic,
    or, from a policy folder, a zero head (V = 0 at first, the same on every rank)."""
    from transformers import AutoModelForTokenClassification
    import transformers
    level = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "score head newly initialised" is expected
    try:
        critic = AutoModelForTokenClassification.from_pretrained(path, num_labels=1)
    finally:
        transformers.logging.set_verbosity(level)
    if critic.config.architectures and "TokenClassification" not in critic.config.architectures[0]:
        with torch.no_grad():
            for param in critic.score.parameters():
                param.zero_()
    return critic


def _token_id(model_path: str, token: str) -> int:
    """The id of a single-token string in the policy's vocabulary (LaSeR's z_c)."""
    tokenizer = load_tokenizer(model_path)
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(f"LaSeR token {token!r} is not in the tokenizer's vocabulary; set the "
                         "self-reward source's kwargs.token to an unused token of this model")
    return token_id


def _rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
