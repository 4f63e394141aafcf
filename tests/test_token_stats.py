"""Output-layer statistics computed in chunks equal those of the whole logits, with equal
gradients, and the learner's forward never builds [b, T, V] logits."""
import math

import pytest
import torch

from learners.token_stats import chunked_token_stats


def test_mean_log_softmax_and_entropy_worked_example():
    # logits [0, log 3]: p = [1/4, 3/4]; mean log p = (log 1/4 + log 3/4) / 2 = -0.837
    stats = chunked_token_stats(torch.tensor([[0.0, math.log(3)]]), torch.eye(2), None,
                                torch.tensor([1]), 1.0, 8, ("logprobs", "entropy", "mean_logsoftmax"))
    assert stats["mean_logsoftmax"].item() == pytest.approx(-0.837, abs=1e-3)
    assert stats["logprobs"].item() == pytest.approx(math.log(0.75))
    assert stats["entropy"].item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_chunks_equal_whole_logits_in_value_and_gradient(chunk):
    torch.manual_seed(0)
    hidden = torch.randn(23, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (23,))
    stats = chunked_token_stats(hidden, weight, None, targets, 0.7, chunk,
                                ("logprobs", "entropy", "mean_logsoftmax"))
    logp = torch.log_softmax(hidden @ weight.T / 0.7, -1)
    whole = {"logprobs": logp.gather(-1, targets[:, None]).squeeze(-1),
             "entropy": -(logp.exp() * logp).sum(-1), "mean_logsoftmax": logp.mean(-1)}
    for name in whole:
        assert torch.allclose(stats[name], whole[name], atol=1e-5), name
    grads = torch.autograd.grad(sum(s.square().sum() for s in stats.values()), (hidden, weight))
    expected = torch.autograd.grad(sum(s.square().sum() for s in whole.values()), (hidden, weight))
    for got, want in zip(grads, expected):
        assert torch.allclose(got, want, atol=1e-4)
