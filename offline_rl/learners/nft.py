"""NFT: Negative-aware Fine-Tuning, learning from rejected samples through an implicit negative policy.

Chen et al., "Bridging Supervised Learning and Reinforcement Learning in Math Reasoning"
(arXiv 2505.18116), as its official implementation (NVlabs/NFT, ``ratio_type=token``) computes it. Samples of
a prompt q come from the behaviour policy b, a share r_q of them right. Rejected samples are modelled by the
implicit negative policy pi^-(y|q) = (b(y|q) - r_q pi(y|q)) / (1 - r_q), whose likelihood is maximised: raising
it lowers pi on rejected answers, with no separate model. Per response token, with R_t = pi(y_t)/b(y_t):

- accepted sample:  loss_t = -omega_q log R_t                                        (SFT's gradient)
- rejected sample:  loss_t = -omega_q log st_max((1 - r^_q R_t) / (1 - r^_q), c)

and, as the official code does by default:
- ``st_max(x, c)`` clamps straight-through: its value is max(x, c), its gradient always x's. Past the floor a
  rejected token whose probability keeps rising is still pushed down, with a bounded gradient (at most
  r^ R_t / ((1 - r^) c) per unit of log R_t), never the 1/x blow-up of a plain log nor a plain clamp's zero.
  ``--negative-clamp`` c = 1.0 is the published recipe's ``clamp_negative``.
- ``r^_q = clip(r_q, 0.02, 0.98)`` (so no prompt divides by 1 - r_q ~ 0), and ``R_t = exp(min(log R_t, 10))``.
- ``omega_q = 1 - r^_q`` weights each prompt (the recipe's ``normalize=1``): with it, on-policy NFT's gradient is
  GRPO's (the paper's NFT = GRPO result); ``--prompt-weight none`` leaves it out.
- groups whose samples are all right or all wrong are left out (the recipe's ``filter_groups`` on accuracy):
  they carry no contrast.

Simplification: the official loss sums tokens and divides by a constant (1000); here, as for every learner,
the step's token mean (a per-step scale, not a change of direction). pi is read at the behaviour's temperature,
projected in float32 (``policy.tempered_logprobs``), so it needs samples of the initial model with their
log-probs, checked on every manifest; the training-inference mismatch is measured and corrected as for ``ppo``
(with the correction, R_t divides by the trainer's recomputed sampling model and each token is weighted).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from offline_rl.learner import Learner, Policy
from offline_rl.learners import mismatch
from offline_rl.views import Example

ACCURACY_BOUNDS = (0.02, 0.98)  # r^: the official clip of each prompt's share of right samples
MAX_LOG_RATIO = 10.0  # R_t = exp(min(log R_t, 10)), as the official code clamps it


@dataclass
class NFTConfig(mismatch.MismatchCorrection):
    negative_clamp: float = field(default=1.0, metadata={
        "help": "nft: floor of the rejected samples' implicit-negative ratio, clamped straight-through (value floored, "
                "gradient kept; the published recipe's 1.0)", "above": 0, "max": 1})
    prompt_weight: str = field(default="1-r", metadata={
        "help": "nft: each prompt's weight omega: 1-r (the published default, 1 minus its bounded accuracy) or none",
        "choices": ["1-r", "none"]})


Config = NFTConfig


def examples(groups: list[Example], cfg: Config, context) -> list[Example]:
    """Prompts with both right and wrong samples: an all-right or all-wrong group has no contrast."""
    return [e for e in groups if 0 < e.group_accuracy < 1]


def straight_through_min(x: torch.Tensor, floor: float) -> torch.Tensor:
    """max(x, floor) in value, x's gradient everywhere."""
    return x + (x.clamp(min=floor) - x).detach()


def loss(policy: Policy, batch: dict[str, torch.Tensor], cfg: Config):
    mask = batch["response_mask"]  # [B, T]
    tempered = policy.tempered_logprobs  # [B, T], at the behaviour's temperature: carries the gradient
    log_ratio = ((tempered - mismatch.proximal(policy, batch, cfg)) * mask).clamp(max=MAX_LOG_RATIO)  # [B, T]
    accepted = (batch["rewards"] == 1.0).float().unsqueeze(-1)  # [B, 1]
    r = batch["group_accuracy"].clamp(*ACCURACY_BOUNDS).unsqueeze(-1)  # [B, 1]
    negative = (1 - r * log_ratio.exp()) / (1 - r)  # [B, T]; 1 at R = 1
    token_loss = accepted * -log_ratio + (1 - accepted) * -torch.log(straight_through_min(negative, cfg.negative_clamp))
    if cfg.prompt_weight == "1-r":
        token_loss = token_loss * (1 - r)
    weight, corrected = mismatch.weights(policy, batch, cfg)  # [B, T]: 1 on the response without the correction
    with torch.no_grad():
        metrics = {"nll_sum": -(policy.logprobs.detach() * mask).sum(), "accepted_sum": (accepted * mask).sum(),
                   "clamped_sum": ((1 - accepted) * (negative < cfg.negative_clamp).float() * mask).sum(), **corrected,
                   **mismatch.diagnostics(tempered, batch, threshold=cfg.mismatch_threshold)}
    return (token_loss * weight).sum(), metrics


LEARNER = Learner("nft", NFTConfig, views=("groups",), loss=loss, examples=examples,
                  inputs=("logprobs", "tempered_logprobs"), more_inputs=mismatch.inputs, float32_projection=True)
