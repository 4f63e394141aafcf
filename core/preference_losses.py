"""Offline preference losses on (chosen, rejected) pairs, for users who have pairs.

DPO and SimPO take per-response summed log-probs (and lengths) of the policy; Bradley-Terry
takes a reward model's scalar scores. Rows 2k and 2k+1 of a preference batch are the chosen
and rejected response of pair k.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """DPO (Rafailov et al., arXiv:2305.18290): -log sigmoid(beta * (log-ratio margin)).

    Returns (loss per pair, implicit reward margin per pair)."""
    margin = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
    return -F.logsigmoid(margin), margin


def simpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, chosen_len: torch.Tensor,
               rejected_len: torch.Tensor, beta: float = 2.0,
               gamma: float = 1.6) -> tuple[torch.Tensor, torch.Tensor]:
    """SimPO (Meng et al., arXiv:2405.14734): reference-free, length-normalised reward
    (beta / |y|) log pi(y|x) with target margin gamma (Mistral-7B-Base: beta 2.0, gamma 1.6).

    Returns (loss per pair, margin per pair)."""
    margin = beta * chosen / chosen_len - beta * rejected / rejected_len - gamma
    return -F.logsigmoid(margin), margin


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor,
                       margin: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Bradley-Terry reward-model loss on scalar scores: -log sigmoid(s_chosen - s_rejected - m)
    (InstructGPT, arXiv:2203.02155; Cooper's online RM update uses it with m = 0).

    Returns (loss per pair, score margin per pair)."""
    gap = chosen - rejected
    return -F.logsigmoid(gap - margin), gap


PREFERENCE_LOSSES = ("dpo", "simpo", "bradley_terry")
