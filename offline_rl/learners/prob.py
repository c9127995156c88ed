"""Probability objectives: loss_t = -p_t^alpha, a prior-leaning alternative to NLL.

Li et al., "Beyond Log Likelihood: Probability-Based Objectives for Supervised Fine-Tuning across the
Model Capability Continuum" (arXiv 2510.00526). NLL, -log p, puts its largest gradient on the tokens
the model finds least likely; the family -p^alpha moves the gradient onto tokens it already finds
plausible: d(-p^alpha) = -alpha p^alpha d(log p). The paper finds such objectives (-p, -p^10) beat NLL
where the model is strong on the task, and NLL better where it is weak. alpha = 1 (-p) has exactly
DFT's token-level gradient (-sg(p) d log p); the default alpha = 10 is the paper's sharper variant.
The loss is differentiated as it stands (no stop-gradient), averaged over response tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from offline_rl.learner import Learner, Policy
from offline_rl.learners.terms import likelihood_metrics


@dataclass
class ProbConfig:
    alpha: float = field(default=10.0, metadata={"help": "prob: the exponent of -p^alpha (1: DFT's gradient)",
                                                 "above": 0, "max": 1000})  # 1e308: a NaN loss at step 1


Config = ProbConfig


def loss(policy: Policy, batch: dict[str, torch.Tensor], cfg: Config):
    mask = batch["response_mask"]  # [B, T]
    powered = torch.exp(cfg.alpha * policy.logprobs) * mask  # p^alpha, computed in log space
    return -powered.sum(), likelihood_metrics(policy.logprobs, mask)


def token_grad(cfg: Config):
    """d(-p^alpha)/d log p = -alpha p^alpha, known in forward: the fused projection serves this learner."""
    return lambda logprobs: -cfg.alpha * torch.exp(cfg.alpha * logprobs)


LEARNER = Learner("prob", ProbConfig, views=("accepted", "all"), loss=loss, token_grad=token_grad)
