"""SFT: maximum likelihood (token-mean NLL) on a view of the data.

The baseline the DFT paper rectifies. On demonstrations (``bin/import``) it is the paper's SFT; on
the accepted view of the policy's own samples it is rejection-sampling fine-tuning (``rft`` is the
same loss under that name). Any dataset, any of its views: nothing here knows where rows came from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from offline_rl.learner import Learner, Policy
from offline_rl.learners.terms import nll_sum


@dataclass
class SFTConfig:
    pass  # no hyper-parameters of its own


Config = SFTConfig


def loss(policy: Policy, batch: dict[str, torch.Tensor], cfg: Config):
    nll = nll_sum(policy.logprobs, batch["response_mask"])  # [B, T] summed
    return nll, {"nll_sum": nll.detach()}


def token_grad(cfg: Config):
    """d loss / d log p_t per response token, known in forward: the fused projection serves this learner."""
    return lambda logprobs: -torch.ones_like(logprobs)


LEARNER = Learner("sft", SFTConfig, views=("accepted", "all"), loss=loss, token_grad=token_grad)
