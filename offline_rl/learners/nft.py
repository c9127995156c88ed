"""NFT: Negative-aware Fine-Tuning, learning from rejected samples through an implicit negative policy.

Chen et al., "Bridging Supervised Learning and Reinforcement Learning in Math Reasoning"
(arXiv 2505.18116). Samples of a prompt q come from the behaviour policy b, a share r_q of them
right. Rejected samples are modelled by the implicit negative policy
pi^-(y|q) = (b(y|q) - r_q pi(y|q)) / (1 - r_q), whose likelihood is maximised: raising it lowers pi on
rejected answers, with no separate model. Per response token, with the ratio R_t = pi(y_t)/b(y_t):

- accepted sample:  loss_t = -log R_t                                  (SFT's gradient)
- rejected sample:  loss_t = -log max((1 - r_q R_t) / (1 - r_q), eps)

averaged over response tokens. At step 0 every R_t is 1 and the rejected term is 0 with a gradient
that lowers pi; ``eps`` keeps the logarithm finite once r_q R_t nears 1 (the paper's clip).
Prompts with no right sample give no gradient (r_q = 0 makes pi^- = b) and are left out.
Simplifications: token-mean aggregation, no per-prompt weighting. pi is read at the behaviour's
temperature, projected in float32 (``batch["ratio_logprobs"]``), so it needs samples of the initial
model with their log-probs, checked on every manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from offline_rl.learner import Learner
from offline_rl.views import Example


@dataclass
class NFTConfig:
    negative_eps: float = field(default=1e-3, metadata={"help": "nft: floor inside the rejected samples' logarithm", "above": 0, "max": 1})


Config = NFTConfig


def examples(groups: list[Example], cfg: Config, context) -> list[Example]:
    """Prompts with at least one rewarded sample: an all-wrong group has no positive to normalise against."""
    return [e for e in groups if e.group_accuracy > 0]


def loss(logprobs: torch.Tensor, batch: dict[str, torch.Tensor], cfg: Config):
    mask = batch["response_mask"]  # [B, T]
    policy = batch.get("ratio_logprobs", logprobs)  # [B, T], at the behaviour's temperature
    log_ratio = (policy - batch["behavior_logprobs"]) * mask  # [B, T]
    accepted = (batch["rewards"] == 1.0).float().unsqueeze(-1)  # [B, 1]
    r = batch["group_accuracy"].clamp(max=1 - 1e-6).unsqueeze(-1)  # [B, 1]; a rejected sample has r < 1
    negative = (1 - r * log_ratio.exp()) / (1 - r)  # [B, T]
    token_loss = accepted * -log_ratio + (1 - accepted) * -torch.log(negative.clamp(min=cfg.negative_eps))
    return (token_loss * mask).sum(), mask.sum(), {"nll_sum": -(logprobs.detach() * mask).sum(),
                                                   "accepted_sum": (accepted * mask).sum()}


LEARNER = Learner("nft", NFTConfig, views=("groups",), loss=loss, examples=examples, behavior_ratio=True,
                  float32_projection=True)
