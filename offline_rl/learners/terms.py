"""Loss terms that several learners share, each written once: the NLL and DFT's probability-weighted NLL."""

from __future__ import annotations

import torch


def nll_sum(logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """-sum_t log p_t over the response tokens: maximum likelihood's loss sum."""
    return -(logprobs * mask).sum()


def dft_sum(logprobs: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """-sum_t sg(w_t) log p_t, DFT's term (arXiv 2508.05629, Eq. 9); ``weights`` [B, T] default to the token's own
    probability sg(p_t)."""
    if weights is None:
        weights = logprobs.detach().exp()  # [B, T]: sg(p_t)
    return -(weights * logprobs * mask).sum()


def likelihood_metrics(logprobs: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The response's NLL and mean probability, logged by every likelihood learner (DFT's loss is ~p times smaller
    than CE and can fall while NLL rises: log both)."""
    logprobs = logprobs.detach()
    return {"nll_sum": -(logprobs * mask).sum(), "p_sum": (logprobs.exp() * mask).sum()}
