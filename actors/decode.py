"""Sampling token by token from a Hugging Face causal LM, computing only the rows still running.

Hugging Face `generate` keeps every row of a batch in each decode step until the last one ends
(a finished row is fed padding), so a batch whose responses end at 20 tokens but one runs to
the limit pays the limit for all of them. This loop drops a row from the KV cache and the
batch the step it emits an end token, prefills each prompt once for its n samples, and keeps
the behaviour log-prob of each sampled token as it goes. The same loop runs on CPU and CUDA.

Sampling follows `generate`'s order: logits / temperature, then top-k, then top-p (keeping the
smallest set of tokens whose probability reaches top_p, at least one). The recorded log-prob is
log softmax(logits / temperature) of the full distribution, as the learner computes it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from transformers import DynamicCache

from core.records import SamplingParams


@dataclass
class Decoded:
    """Per row (prompt-major, n rows per prompt): the response ids (with the end token when
    one was sampled), the behaviour log-prob and the weights version of each, and whether
    max_new_tokens cut the response."""

    tokens: list[list[int]]
    logprobs: list[list[float]]
    versions: list[list[int]]
    truncated: list[bool]


def warp(logits: torch.Tensor, sp: SamplingParams) -> torch.Tensor:
    """Logits of the sampling distribution: top-k, then top-p, removed tokens at -inf."""
    if 0 < sp.top_k < logits.shape[-1]:
        kth = logits.topk(sp.top_k, -1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sp.top_p < 1.0:
        ordered, order = logits.sort(-1)                       # ascending
        cumulative = ordered.softmax(-1).cumsum(-1)
        drop = cumulative <= 1.0 - sp.top_p
        drop[:, -1] = False                                    # the likeliest token stays
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


@torch.no_grad()
def sample(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, sp: SamplingParams,
           end_ids: set[int], weights_version: Callable[[], int] = lambda: 0) -> Decoded:
    """`sp.n` responses to each left-padded prompt row. The caller seeds torch's generator.

    `weights_version()` is asked before every token; it may load newer weights into `model`
    (partial rollouts). When the version changes, the running rows' prompts and tokens so far
    are prefilled again under the new weights, so each later token is sampled, and its
    log-prob recorded, by the new policy alone."""
    greedy = sp.temperature == 0
    temperature = 1.0 if greedy else sp.temperature
    version = weights_version()
    cache, logits = _prefill(model, input_ids, attention_mask)
    # one prefill per prompt; its n copies share it
    cache.batch_repeat_interleave(sp.n)
    logits = logits.repeat_interleave(sp.n, 0)
    ids = input_ids.repeat_interleave(sp.n, 0)       # every row's tokens so far, for a re-prefill
    mask = attention_mask.repeat_interleave(sp.n, 0)
    rows = ids.shape[0]
    running = torch.arange(rows, device=ids.device)  # the original row of each live row
    tokens = [[] for _ in range(rows)]
    logprobs = [[] for _ in range(rows)]
    versions = [[] for _ in range(rows)]
    ends = torch.tensor(sorted(end_ids), device=ids.device)
    for step in range(sp.max_new_tokens):
        if step and (now := weights_version()) != version:
            version = now
            cache, logits = _prefill(model, ids, mask)
        scaled = logits / temperature
        if greedy:
            picked = scaled.argmax(-1)
        else:
            picked = torch.multinomial(warp(scaled, sp).softmax(-1), 1).squeeze(-1)
        logp = scaled.log_softmax(-1).gather(-1, picked[:, None]).squeeze(-1)
        for row, token, lp in zip(running.tolist(), picked.tolist(), logp.tolist()):
            tokens[row].append(token)
            logprobs[row].append(lp)
            versions[row].append(version)
        live = ~torch.isin(picked, ends)
        if step == sp.max_new_tokens - 1 or not live.any():
            break
        if not live.all():
            keep = live.nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            running, picked, ids, mask = running[keep], picked[keep], ids[keep], mask[keep]
        ids = torch.cat([ids, picked[:, None]], -1)
        mask = torch.cat([mask, mask.new_ones(len(running), 1)], -1)
        position = mask.sum(-1, keepdim=True) - 1
        logits = model(input_ids=picked[:, None], attention_mask=mask, position_ids=position,
                       past_key_values=cache, use_cache=True).logits[:, -1].float()
    truncated = [not (row and row[-1] in end_ids) for row in tokens]
    return Decoded(tokens, logprobs, versions, truncated)


def _prefill(model, ids: torch.Tensor, mask: torch.Tensor):
    """A fresh KV cache of left-padded rows, and the float logits after their last token."""
    cache = DynamicCache(config=model.config)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                past_key_values=cache, use_cache=True, logits_to_keep=1)
    return cache, out.logits[:, -1].float()
