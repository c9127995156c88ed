"""DFT: Dynamic Fine-Tuning on the policy's own accepted samples.

Wu et al., "On the Generalization of SFT: A Reinforcement Learning Perspective
with Reward Rectification" (arXiv 2508.05629), Eq. 9 / Algorithm 1. The SFT
gradient is a policy gradient with implicit reward 1/p(y_t), which explodes on
unlikely tokens; scaling each token's NLL by its own detached probability,
``loss_t = -sg(p_t) * log p_t``, rectifies it. In the paper's offline-RL setting
the samples are the base model's own verified-correct responses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from offline_rl.data import sampled_examples


@dataclass
class DFTConfig:
    pass  # no hyper-parameters of its own


Config = DFTConfig


def examples(dataset, context, cfg: Config | None = None):
    return sampled_examples(dataset, accepted_only=True, context=context)


def loss(logprobs: torch.Tensor, batch: dict[str, torch.Tensor], cfg: Config):
    mask = batch["response_mask"]  # [B, T]
    token_probs = logprobs.detach().exp()  # [B, T]; sg(p_t): a weight, never differentiated
    dft_sum = -(token_probs * logprobs * mask).sum()
    n_tokens = mask.sum()
    # DFT's loss is ~p times smaller than CE and can fall while NLL rises: log both
    return dft_sum, n_tokens, {"nll_sum": -(logprobs.detach() * mask).sum(), "p_sum": (token_probs * mask).sum()}
