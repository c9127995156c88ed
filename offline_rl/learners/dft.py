"""DFT: Dynamic Fine-Tuning, NLL weighted by the detached probability of what is learned.

Wu et al., "On the Generalization of SFT: A Reinforcement Learning Perspective with Reward
Rectification" (arXiv 2508.05629), Eq. 9 / Algorithm 1. The SFT gradient is a policy gradient with
implicit reward 1/p, which explodes on unlikely tokens; weighting each token's NLL by a detached
probability rectifies it. ``--weighting`` picks the probability (the paper's Table 5 ablation),
for a response y_1..y_n with p_t = pi(y_t | x, y_<t) and sg() a stop-gradient:

- ``token`` (the paper's DFT):  loss_t = -sg(p_t) * log p_t
- ``sequence``:                 loss_t = -sg(prod_s p_s) * log p_t        (one weight per response)
- ``geometric``:                loss_t = -sg(exp(mean_s log p_s)) * log p_t  (the per-token geometric mean)

``--min-weight W`` floors the weight, ``max(w, W)``: EOS and other rare special tokens otherwise get
tiny weights, and a model trained so can fail to stop. The loss is a token mean, as SFT's. Runs on any
view with rewarded rows: demonstrations (the paper's main setting) or accepted samples (its offline RL).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from offline_rl.learner import Learner, Policy
from offline_rl.learners.terms import dft_sum, likelihood_metrics


@dataclass
class DFTConfig:
    weighting: str = field(default="token", metadata={
        "help": "dft: the detached weight: token sg(p_t), sequence sg(prod p_t), geometric sg(exp(mean log p_t))",
        "choices": ["token", "sequence", "geometric"]})
    min_weight: float = field(default=0.0, metadata={
        "help": "dft: floor of the detached weight (0: none)", "min": 0, "max": 1})


Config = DFTConfig


def weights(logprobs: torch.Tensor, mask: torch.Tensor, cfg: Config) -> torch.Tensor:
    """The detached weight of every response token: [B, T]."""
    logprobs = logprobs.detach() * mask
    if cfg.weighting == "token":
        w = logprobs.exp()
    else:
        total = logprobs.sum(-1, keepdim=True)  # [B, 1]: log prod_s p_s
        if cfg.weighting == "geometric":
            total = total / mask.sum(-1, keepdim=True).clamp(min=1)
        w = total.exp().expand_as(logprobs)
    return w.clamp(min=cfg.min_weight) * mask


def loss(policy: Policy, batch: dict[str, torch.Tensor], cfg: Config):
    mask = batch["response_mask"]  # [B, T]
    w = weights(policy.logprobs, mask, cfg)  # [B, T]; sg(.): a weight, never differentiated
    return dft_sum(policy.logprobs, mask, w), {**likelihood_metrics(policy.logprobs, mask), "weight_sum": w.sum()}


def token_grad(cfg: Config):
    """d loss / d log p_t = -sg(max(p_t, floor)) for the token weighting, known in forward (the fused projection);
    None for the sequence-level weightings, which need a whole response first (the checkpointed path)."""
    if cfg.weighting != "token":
        return None
    return lambda logprobs: -logprobs.exp().clamp(min=cfg.min_weight)


LEARNER = Learner("dft", DFTConfig, views=("accepted", "all"), loss=loss, token_grad=token_grad)
