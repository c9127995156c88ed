"""PEAR: SFT reweighted by importance ratios between the current policy and the one that produced the data.

Zhang et al., "Good SFT Optimizes for SFT, Better SFT Prepares for Reinforcement Learning" (arXiv 2602.01058, ICML
2026). The SFT data come from a behaviour policy b, the RL stage after it samples from the policy pi; PEAR (Policy
Evaluation-inspired Algorithm for offline learning loss Reweighting) weights each token's NLL by how likely pi is
to produce what follows it, an importance ratio to b as off-policy evaluation uses one. With d_s = log pi(y_s) -
log b(y_s) over the response, the weight, detached and clipped to at most ``--max-weight``:

- ``--level token``:     log w_t = sum_{s > t} gamma^(s-t-1) d_s      (the discounted suffix of the ratios after t)
- ``--level block``:     the same over blocks of ``--block-size`` tokens: every token of block c gets
                         log w = sum_{c' > c} gamma^(c'-c-1) D_c',  D_c' the block's summed d
- ``--level sequence``:  log w = sum_s d_s on every token            (the whole response's ratio)

so that w = 1 everywhere while pi is b. pi is read at the behaviour's temperature, projected in float32
(``policy.tempered_logprobs``); the NLL is the temperature-1 policy's. Token mean. It needs the log-probs of
the policy that produced the data: samples (the ratio learners' exactness checks apply: a sampling it cannot divide
by is refused), or demonstrations a model scored (``bin/rescore --logprobs-model M``).

Not checked against the paper: we could read its abstract and summaries only, not its method section, and found
no official code. The three levels, the discounted suffix and the reweighting of SFT are the abstract's; where each
suffix starts (after t, as per-decision importance sampling of the value of (s_t, y_t) does), the discount's form
and default (gamma = 0.95), the block size (16) and the clip (2) are our reading, named in docs/learners.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from offline_rl.learner import Learner, Policy
from offline_rl.learners import mismatch
from offline_rl.learners.terms import dft_sum, likelihood_metrics

LEVELS = ("token", "block", "sequence")


@dataclass
class PEARConfig:
    level: str = field(default="token", metadata={"help": "pear: the ratio each token's NLL is weighted by: token "
                                                          "(discounted suffix), block (suffix of blocks), sequence "
                                                          "(the whole response's)", "choices": list(LEVELS)})
    discount: float = field(default=0.95, metadata={"help": "pear: gamma, the discount of a suffix's later ratios "
                                                            "(token and block levels)", "above": 0, "max": 1})
    block_size: int = field(default=16, metadata={"help": "pear: tokens per block (block level)", "min": 1})
    max_weight: float = field(default=2.0, metadata={"help": "pear: clip of the importance weight", "above": 0,
                                                     "max": 1000})


Config = PEARConfig


def discounted_suffix(values: torch.Tensor, discount: float) -> torch.Tensor:
    """[B, N] -> [B, N]: sum_{s > n} discount^(s-n-1) values[:, s], by L_n = v_{n+1} + discount L_{n+1}."""
    out = torch.zeros_like(values)
    for n in range(values.shape[1] - 2, -1, -1):
        out[:, n] = values[:, n + 1] + discount * out[:, n + 1]
    return out


def log_weights(log_ratio: torch.Tensor, mask: torch.Tensor, cfg: Config) -> torch.Tensor:
    """log w for every response token, [B, T] (0 off the response), from the per-token log-ratios [B, T]."""
    d = log_ratio * mask
    if cfg.level == "sequence":
        return d.sum(-1, keepdim=True) * mask
    if cfg.level == "token":
        return discounted_suffix(d, cfg.discount) * mask
    position = (mask.cumsum(-1) - 1).clamp(min=0)  # [B, T]: the token's place in its response
    block = (position // cfg.block_size).long() * mask.long()  # [B, T]
    blocks = torch.zeros(mask.shape[0], int(block.max()) + 1, dtype=d.dtype, device=d.device)  # [B, C]
    blocks.scatter_add_(1, block, d)  # D_c: each block's summed log-ratio
    return discounted_suffix(blocks, cfg.discount).gather(1, block) * mask


def loss(policy: Policy, batch: dict[str, torch.Tensor], cfg: Config):
    mask = batch["response_mask"]  # [B, T]
    with torch.no_grad():
        log_ratio = policy.tempered_logprobs - batch["behavior_logprobs"]  # [B, T], at the behaviour's temperature
        weights = log_weights(log_ratio, mask, cfg).exp().clamp(max=cfg.max_weight) * mask  # [B, T]
    metrics = {**likelihood_metrics(policy.logprobs, mask), "weight_sum": weights.sum(),
               **mismatch.diagnostics(policy.tempered_logprobs, batch)}
    return dft_sum(policy.logprobs, mask, weights), metrics


# divides by the behaviour policy: the loop checks every dataset's sampling settings and tempers the policy
LEARNER = Learner("pear", PEARConfig, views=("accepted", "all"), loss=loss, inputs=("logprobs", "tempered_logprobs"),
                  float32_projection=True)
