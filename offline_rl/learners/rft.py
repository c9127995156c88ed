"""RFT: rejection-sampling fine-tuning, NLL on the policy's own accepted samples.

Yuan et al., "Scaling Relationship on Learning Mathematical Reasoning with Large
Language Models" (arXiv 2308.01825). Samples whose verified reward is 1 are kept
and trained on with plain maximum likelihood.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from offline_rl.learner import Learner


@dataclass
class RFTConfig:
    pass  # no hyper-parameters of its own


Config = RFTConfig



def loss(logprobs: torch.Tensor, batch: dict[str, torch.Tensor], cfg: Config):
    mask = batch["response_mask"]  # [B, T]
    nll_sum = -(logprobs * mask).sum()
    n_tokens = mask.sum()
    return nll_sum, n_tokens, {"nll_sum": nll_sum.detach()}


def token_grad(cfg: Config):
    """d loss / d log p_t per response token, known in forward: the fused projection serves this learner."""
    return lambda logprobs: -torch.ones_like(logprobs)


LEARNER = Learner("rft", RFTConfig, views=("accepted",), loss=loss, token_grad=token_grad)
