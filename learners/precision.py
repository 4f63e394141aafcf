"""Mixed precision on a learner rank: fp32 weights, gradients and optimizer state; forward and
backward in a low dtype (model.dtype=bfloat16).

Sharded ranks get it from FSDP2's MixedPrecisionPolicy (learners/worker.py). A single rank is
not sharded (FSDP2 over one rank only copies: about 20% of the toy learner's step) and gets
it from torch.autocast, which runs the matmuls in bf16 and keeps the rest in fp32.

On CPU, attention runs in fp32 either way: torch's CPU flash-attention backward is about 9x
slower in bf16 than in fp32 (toy learner step: 776 vs 85 ms), which cancelled all the bf16
matmul gain (AMX: 4-5x faster matmuls).
"""
from __future__ import annotations

import contextlib

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

FP32_CPU_SDPA = "sdpa_fp32_on_cpu"   # HF attention implementation name registered below


def _sdpa_fp32_on_cpu(module, query, key, value, attention_mask, **kwargs):
    """HF's SDPA attention in fp32 on CPU, whatever the inputs' dtype or an autocast says."""
    if query.device.type != "cpu":
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    with torch.autocast("cpu", enabled=False):   # (autocast would cast fp32 inputs down)
        out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(),
                                              attention_mask, **kwargs)
    return out.to(query.dtype), weights


def _sdpa_mask_always(*args, **kwargs):
    """HF's SDPA mask, built even where a batch has no padding (where HF passes None and
    lets SDPA apply causality itself): a compiled block (learner.compile) then sees one
    input type and compiles once, not again at the first micro-batch without padding."""
    return sdpa_mask(*args, **{**kwargs, "allow_is_causal_skip": False})


AttentionInterface.register(FP32_CPU_SDPA, _sdpa_fp32_on_cpu)
AttentionMaskInterface.register(FP32_CPU_SDPA, _sdpa_mask_always)


def attention_in_fp32_on_cpu(model: torch.nn.Module, device: torch.device, dtype: str) -> None:
    """Switch a model that uses HF's SDPA attention to the fp32-on-CPU variant when it will
    be trained in a low dtype on CPU (other implementations are left alone)."""
    if (device.type == "cpu" and dtype != "float32"
            and getattr(model.config, "_attn_implementation", None) == "sdpa"):
        model.set_attn_implementation(FP32_CPU_SDPA)


def autocast(device: torch.device, dtype: str, sharded: bool):
    """The context a forward pass runs in: autocast to `dtype` on an unsharded rank that
    computes in a low dtype; nothing otherwise (fp32, or FSDP2 casting the parameters)."""
    if sharded or dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, dtype))
