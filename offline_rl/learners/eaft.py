"""EAFT: Entropy-Adaptive Fine-Tuning, each token's NLL weighted by the model's normalised top-k entropy.

Diao et al., "Entropy-Adaptive Fine-Tuning: Resolving Confident Conflicts to Mitigate Forgetting" (arXiv
2601.02151; code PRIS-CV/EAFT, merged into LLaMA-Factory as ``use_eaft_loss``). A token the model predicts with low
entropy but low probability is a "confident conflict": the model is sure of something else, and SFT's gradient on it
is what erodes its general abilities. EAFT scales each token's NLL by the entropy of the model's own next-token
distribution, approximated over its k likeliest tokens and normalised by the largest it can be, log k:

    loss_t = -sg((H_k(t) / log k)^alpha) * log p_t,   H_k(t) = -sum_{j in top-k} q_j log q_j,  q = softmax(top-k logits)

so confident positions learn little and uncertain ones as in SFT. ``--topk`` (20) and ``--entropy-alpha`` (1) are the
published defaults (LLaMA-Factory's ``_eaft_cross_entropy``). The entropy is computed inside the chunked projection
(``policy.topk_entropy``: no [B, T, V] logits held), detached. Token mean, as SFT's. Departure: LLaMA-Factory divides
by the constant 3.0 (log 20 = 2.996); we divide by log k, so that weights stay in [0, 1] for any k.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from offline_rl.learner import Learner, Policy
from offline_rl.learners.terms import dft_sum, likelihood_metrics


@dataclass
class EAFTConfig:
    topk: int = field(default=20, metadata={"help": "eaft: k, the likeliest tokens the entropy is taken over",
                                            "min": 2})
    entropy_alpha: float = field(default=1.0, metadata={"help": "eaft: alpha, the exponent of the normalised "
                                                                "entropy weight", "above": 0, "max": 1000})


Config = EAFTConfig


def weights(topk_entropy: torch.Tensor, mask: torch.Tensor, cfg: Config) -> torch.Tensor:
    """(H_k / log k)^alpha at every response token, [B, T] (0 off it)."""
    return (topk_entropy / math.log(cfg.topk)).clamp(0, 1).pow(cfg.entropy_alpha) * mask


def loss(policy: Policy, batch: dict[str, torch.Tensor], cfg: Config):
    mask = batch["response_mask"]  # [B, T]
    w = weights(policy.topk_entropy, mask, cfg)  # [B, T]; detached: a weight, never differentiated
    metrics = {**likelihood_metrics(policy.logprobs, mask), "weight_sum": w.sum(),
               "entropy_sum": (policy.topk_entropy * mask).sum()}
    return dft_sum(policy.logprobs, mask, w), metrics


LEARNER = Learner("eaft", EAFTConfig, views=("accepted", "all"), loss=loss, inputs=("logprobs", "topk_entropy"),
                  topk=lambda cfg: cfg.topk)
