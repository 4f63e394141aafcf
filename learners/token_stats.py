"""Per-token statistics of a language model's output layer, without its full logits.

The learner needs, for each response token, log p(token), the entropy of p and (for some
losses) the vocabulary mean of log p. From whole [b, T, V] logits each of those costs b*T*V
floats, several times over: 16 rows x 1,024 tokens x 151,936 (Qwen's vocabulary) is 10 GB in
fp32 per copy. Here the output layer runs on `chunk_tokens` tokens at a time; with gradients
each chunk is checkpointed (its logits are recomputed in backward), so what is kept is the
[N, k] statistics and the extra peak is a few chunk_tokens x V floats.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

STATS = ("logprobs", "entropy", "mean_logsoftmax")


def chunked_token_stats(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        targets: torch.Tensor, temperature: float, chunk_tokens: int,
                        names: tuple[str, ...] = ("logprobs",)) -> dict[str, torch.Tensor]:
    """hidden [N, H]: the final hidden states that predict targets [N]; weight/bias: the output
    layer. Returns {name: [N] float32} for the names asked (of STATS), of softmax(logits / T):
      logprobs        log p(target)
      entropy         -sum_v p log p  (= logsumexp(z) - sum_v p z)
      mean_logsoftmax mean_v log p    (= mean(z) - logsumexp(z))"""
    unknown = set(names) - set(STATS)
    if unknown:
        raise ValueError(f"unknown token statistics {sorted(unknown)}; choose from {STATS}")
    pieces = []
    for start in range(0, len(hidden), chunk_tokens):
        args = (hidden[start:start + chunk_tokens], weight, bias,
                targets[start:start + chunk_tokens], temperature, names)
        if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
            pieces.append(checkpoint(_chunk, *args, use_reentrant=False))
        else:
            pieces.append(_chunk(*args))
    flat = torch.cat(pieces) if pieces else hidden.new_zeros(0, len(names), dtype=torch.float32)
    return {name: flat[:, i] for i, name in enumerate(names)}


def _chunk(hidden, weight, bias, targets, temperature, names):
    logits = F.linear(hidden, weight, bias).float() / temperature   # [n, V]: one chunk only
    lse = logits.logsumexp(-1)
    columns = []
    for name in names:
        if name == "logprobs":
            columns.append(logits.gather(-1, targets[:, None]).squeeze(-1) - lse)
        elif name == "entropy":
            columns.append(lse - (torch.softmax(logits, -1) * logits).sum(-1))
        else:
            columns.append(logits.mean(-1) - lse)
    return torch.stack(columns, -1)
