"""One learner rank: a torch.distributed process holding an FSDP2 shard of the policy.

The rank is algorithm-blind: batches arrive with per-token `advantages` and `loss_weights`
already computed (see learners/algorithms.py), and it minimises
    sum(loss_weights * (policy_loss + kl_coef * kl - entropy_coef * entropy))
over each mini-batch. The loss weights sum over the whole global mini-batch, so rank r
sums its own rows and FSDP's gradient averaging is undone by scaling with the world size.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from core.models import copy_tokenizer, load_policy
from core.net import node_address
from core.records import Batch
from learners.algorithms import clipped_policy_loss, entropy_from_logits, kl_estimate


@dataclass
class LearnerSettings:
    """Learner hyper-parameters (documented in conf/learner/*.yaml and conf/algorithm/*.yaml)."""

    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    mini_batch_size: int = 64      # responses per optimizer step, all ranks together
    micro_batch_size: int = 16     # responses per forward/backward on one rank
    epochs: int = 1                # passes over each rollout batch
    clip_low: float = 0.2
    clip_high: float = 0.2
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    entropy_coef: float = 0.0
    temperature: float = 1.0       # the sampler's temperature: log-probs are of logits / T
    recompute_old_logprobs: bool = True
    strategy: str = "fsdp2"        # "fsdp2", or "none": one rank, no sharding
    threads: int = 0               # torch intra-op threads on CPU; 0 leaves torch's default
    dtype: str = "float32"         # "bfloat16": FSDP2 computes in bf16, keeps fp32 master weights


class LearnerWorker:
    """Create one per rank (as a Ray actor or in-process) and call `setup` on all of them."""

    def __init__(self, rank: int, world_size: int, model_path: str, settings: dict,
                 use_reference: bool):
        self.rank, self.world_size = rank, world_size
        self.s = LearnerSettings(**settings)
        self.model_path = model_path
        self.use_reference = use_reference
        self.version = 0
        if self.s.threads:
            torch.set_num_threads(self.s.threads)
        cuda = torch.cuda.is_available()
        self.device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")

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
        self.model = self._sharded(load_policy(self.model_path))
        self.model.train()
        self.reference = None
        if self.use_reference:
            self.reference = self._sharded(load_policy(self.model_path)).eval()
            self.reference.requires_grad_(False)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.s.lr,
                                           betas=tuple(self.s.betas),
                                           weight_decay=self.s.weight_decay)
        warmup = max(self.s.warmup_steps, 0)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda n: min(1.0, (n + 1) / warmup) if warmup else 1.0)
        return self.rank

    def _sharded(self, model: torch.nn.Module) -> torch.nn.Module:
        model.to(self.device)
        if self.s.strategy == "fsdp2":
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
            low = getattr(torch, self.s.dtype)
            mp = MixedPrecisionPolicy(param_dtype=low, reduce_dtype=torch.float32)
            for layer in model.model.layers:
                fully_shard(layer, mp_policy=mp)
            fully_shard(model, mp_policy=mp)
        return model

    # --- maths on one micro-batch --------------------------------------------------------

    def _forward(self, model, mb: Batch, with_entropy: bool):
        mb = mb.trimmed()
        out = model(input_ids=mb.input_ids.to(self.device),
                    attention_mask=mb.attention_mask.to(self.device),
                    position_ids=mb.position_ids.to(self.device), use_cache=False)
        P = mb.prompt_len
        logits = out.logits[:, P - 1:-1].float() / self.s.temperature
        targets = mb.input_ids[:, P:].to(self.device)
        logprobs = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        entropy = entropy_from_logits(logits) if with_entropy else None
        return mb, logprobs, entropy

    def _my_rows(self, batch: Batch) -> Batch:
        """This rank's contiguous share of a global mini-batch."""
        per_rank = len(batch) // self.world_size
        return batch.select(slice(self.rank * per_rank, (self.rank + 1) * per_rank))

    def _micro_batches(self, rows: Batch):
        size = self.s.micro_batch_size
        return [rows.select(slice(i, i + size)) for i in range(0, len(rows), size)]

    @torch.no_grad()
    def _logprobs_of(self, model, batch: Batch) -> torch.Tensor:
        """Log-probs of the response tokens under `model`, padded to the batch's width."""
        out = torch.zeros_like(batch.behaviour_logprobs)
        for i in range(0, len(batch), self.s.micro_batch_size):
            mb = batch.select(slice(i, i + self.s.micro_batch_size))
            _, lp, _ = self._forward(model, mb, with_entropy=False)
            out[i:i + len(mb), :lp.shape[1]] = lp.cpu()
        return out

    # --- training steps ------------------------------------------------------------------

    def train_step(self, batch: Batch) -> dict:
        """One RL step over a rollout batch: `epochs` passes of global mini-batches.

        `batch.extras` must hold `advantages` and `loss_weights` [B, R]; the weights of each
        mini-batch sum to 1 over the whole mini-batch (all ranks).
        """
        M = self.s.mini_batch_size
        minis = [batch.select(slice(i, i + M)) for i in range(0, len(batch), M)]
        minis = [self._my_rows(mb) for mb in minis]
        mismatch = torch.zeros(2)  # sum |learner - sampler| log-prob, tokens
        for mb in minis:
            if self.s.recompute_old_logprobs:
                old = self._logprobs_of(self.model, mb)
                real = mb.attention_mask[:, mb.prompt_len:].float()  # every sampled token
                gap = (old - mb.behaviour_logprobs).abs() * real
                mismatch += torch.stack([gap.sum(), real.sum()])
            else:
                old = mb.behaviour_logprobs
            mb.extras["old_logprobs"] = old
            if self.reference is not None:
                mb.extras["ref_logprobs"] = self._logprobs_of(self.reference, mb)
        sums = torch.zeros(len(_SUMMED))
        grad_norms = []
        for _ in range(self.s.epochs):
            for mb in minis:
                sums += self._accumulate(mb)
                grad_norms.append(self._optimizer_step())
        self.version += 1
        metrics = self._reduce_metrics(sums, grad_norms)
        if self.s.recompute_old_logprobs:
            if self.world_size > 1:
                dist.all_reduce(mismatch)
            # Same weights, so any gap is the sampler and the learner computing differently.
            metrics["logprob_mismatch"] = float(mismatch[0] / mismatch[1].clamp(min=1))
        return metrics

    def _accumulate(self, rows: Batch) -> torch.Tensor:
        """Forward/backward every micro-batch of this rank's rows; returns weighted sums."""
        sums = torch.zeros(len(_SUMMED))
        micros = self._micro_batches(rows)
        for k, mb in enumerate(micros):
            self._sync_gradients(k == len(micros) - 1)
            mb, logprobs, entropy = self._forward(self.model, mb, with_entropy=True)
            R = logprobs.shape[1]
            x = {name: v[:, :R].to(self.device) for name, v in mb.extras.items()}
            w = x["loss_weights"]
            pg, clipped = clipped_policy_loss(logprobs, x["old_logprobs"], x["advantages"],
                                              self.s.clip_low, self.s.clip_high)
            per_token = pg - self.s.entropy_coef * entropy
            kl = torch.zeros_like(pg)
            if self.reference is not None:
                kl = kl_estimate(logprobs, x["ref_logprobs"], self.s.kl_estimator)
                per_token = per_token + self.s.kl_coef * kl
            loss = (w * per_token).sum()
            (loss * self.world_size).backward()
            sums += torch.stack([loss, (w * pg).sum(), (w * kl).sum(), (w * entropy).sum(),
                                 (w * clipped).sum()]).detach().cpu()
        return sums

    def _sync_gradients(self, sync: bool) -> None:
        if hasattr(self.model, "set_requires_gradient_sync"):
            self.model.set_requires_gradient_sync(sync)

    def _optimizer_step(self) -> float:
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.s.max_grad_norm)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def _reduce_metrics(self, sums: torch.Tensor, grad_norms: list[float]) -> dict:
        """Mean per optimizer step of each weighted sum, over all ranks."""
        if self.world_size > 1:
            dist.all_reduce(sums)
        steps = max(len(grad_norms), 1)
        out = {k: v / steps for k, v in zip(_SUMMED, sums.tolist())}
        out["grad_norm"] = sum(grad_norms) / steps
        out["lr"] = self.optimizer.param_groups[0]["lr"]
        out["optimizer_steps"] = len(grad_norms)
        return out

    def sft_step(self, batch: Batch) -> dict:
        """One supervised step: minimise sum(loss_weights * -log p(token)) over the batch."""
        total = torch.zeros(1)
        micros = self._micro_batches(self._my_rows(batch))
        for k, mb in enumerate(micros):
            self._sync_gradients(k == len(micros) - 1)
            mb, logprobs, _ = self._forward(self.model, mb, with_entropy=False)
            w = mb.extras["loss_weights"][:, :logprobs.shape[1]].to(self.device)
            loss = -(w * logprobs).sum()
            (loss * self.world_size).backward()
            total += loss.detach().cpu()
        norm = self._optimizer_step()
        if self.world_size > 1:
            dist.all_reduce(total)
        return {"sft_loss": float(total), "grad_norm": norm}

    # --- weights and checkpoints ---------------------------------------------------------

    def full_state_dict(self) -> dict | None:
        """The whole policy's weights on CPU, on rank 0 (None elsewhere). All ranks must call."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        state = get_model_state_dict(self.model, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))
        return state if self.rank == 0 else None

    def save(self, folder: str, tokenizer_path: str) -> None:
        """Write a HF folder (loadable by from_pretrained) plus optimizer, scheduler and
        each rank's RNG state (dropout, if the model has any, draws from it)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
        model_state = self.full_state_dict()
        optim_state = get_optimizer_state_dict(self.model, self.optimizer, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(_rng_state(), folder / f"rng_rank{self.rank}.pt")
        if self.rank == 0:
            self.model.save_pretrained(folder, state_dict=model_state)
            copy_tokenizer(tokenizer_path, folder)
            torch.save({"optimizer": optim_state, "scheduler": self.scheduler.state_dict()},
                       folder / "optimizer.pt")
            (folder / "learner_state.json").write_text(json.dumps({"version": self.version}))
        if self.world_size > 1:
            dist.barrier()

    def load(self, folder: str) -> int:
        """Restore weights, optimizer and scheduler written by `save`; every rank reads them."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions, set_model_state_dict, set_optimizer_state_dict)
        folder = Path(folder)
        full = StateDictOptions(full_state_dict=True)
        # from_pretrained restores tied weights that the safetensors file stores once.
        set_model_state_dict(self.model, load_policy(folder).state_dict(), options=full)
        extra = torch.load(folder / "optimizer.pt", weights_only=False)
        set_optimizer_state_dict(self.model, self.optimizer, extra["optimizer"], options=full)
        self.scheduler.load_state_dict(extra["scheduler"])
        rng = folder / f"rng_rank{self.rank}.pt"
        if rng.exists():  # absent when resuming with more ranks than were saved
            _set_rng_state(torch.load(rng, weights_only=False))
        self.version = json.loads((folder / "learner_state.json").read_text())["version"]
        return self.version

    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def _rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# Loss-weighted sums each micro-batch adds up; reported as means per optimizer step.
_SUMMED = ("loss", "pg_loss", "kl", "entropy", "clip_fraction")
