"""GRPO: the clipped surrogate with group-relative advantages, each response's tokens averaged first.

Shao et al., "DeepSeekMath" (arXiv 2402.03300), Eq. 3: for a group of responses to one prompt,
``A_i = (r_i - mean(r)) / std(r)``, and the objective averages ``min(ratio A, clip(ratio) A)`` over each
response's tokens, then over the responses (``--aggregation sequence``; ``token`` is DAPO's token mean,
which is our ``ppo``). Online GRPO is this learner with fresh samples at every step: ``bin/iterate
--learner grpo --steps-per-round 1``, where every ratio is 1 when the step begins (logged as
``abs_log_ratio_max``). On a fixed dataset it is offline PPO with GRPO's aggregation. The ratio is exact
for the recorded sampling settings or refused, and measured and corrected for the training-inference mismatch,
as for ``ppo``. Simplification: no KL term to a reference
model (beta = 0, as in DAPO and Dr. GRPO), so the clip is the only trust region.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from offline_rl.learner import Learner, Policy
from offline_rl.learners import mismatch, ppo


@dataclass
class GRPOConfig(mismatch.MismatchCorrection):
    clip_eps: float = field(default=0.2, metadata={
        "help": "grpo: clip range epsilon of the ratio", "above": 0, "max": 1})
    scale_advantages: bool = field(default=True, metadata={
        "help": "grpo: divide group advantages by the group's std (off: Dr. GRPO)"})
    aggregation: str = field(default="sequence", metadata={
        "help": "grpo: average each response's tokens first (sequence, as the GRPO paper) or all tokens at once "
                "(token)", "choices": ["sequence", "token"]})


Config = GRPOConfig


def normaliser(cfg: Config) -> str:
    """What the loss averages over: responses (sequence aggregation) or tokens."""
    return "response" if cfg.aggregation == "sequence" else "token"


def loss(policy: Policy, batch: dict[str, torch.Tensor], cfg: Config):
    mask = batch["response_mask"]  # [B, T]
    surrogate, diag = ppo.clipped_surrogate(policy.tempered_logprobs, mismatch.proximal(policy, batch, cfg), batch, cfg)
    # each response's share: 1 / its length (sequence) or 1 (token); the loop divides by the step's units
    share = (1 / mask.sum(-1, keepdim=True).clamp(min=1) if cfg.aggregation == "sequence"
             else torch.ones_like(mask[:, :1]))
    weight, corrected = mismatch.weights(policy, batch, cfg, share)  # [B, T]
    loss_sum = -(surrogate * weight * share).sum()
    metrics = {"nll_sum": -(policy.logprobs.detach() * mask * share).sum(), "ratio_sum": (diag["ratio"] * share).sum(),
               "clip_fraction_sum": (diag["clipped"] * share).sum(),
               "abs_log_ratio_sum": (diag["abs_log_ratio"] * share).sum(),
               "abs_log_ratio_max": diag["abs_log_ratio"].max(), **corrected,
               **mismatch.diagnostics(policy.tempered_logprobs, batch, share, cfg.mismatch_threshold)}
    return loss_sum, metrics


LEARNER = Learner("grpo", GRPOConfig, views=ppo.LEARNER.views, loss=loss, examples=ppo.examples, normaliser=normaliser,
                  inputs=("logprobs", "tempered_logprobs"), more_inputs=mismatch.inputs, float32_projection=True)
