"""Importance-weighted SFT on accepted samples.

Qin & Springenberg, "Supervised Fine Tuning on Curated Data is Reinforcement Learning
(and can be improved)" (arXiv 2507.12856): SFT on reward-filtered samples maximises a
loose lower bound of the RL objective; re-weighting each sample by the (clipped)
ratio of the current policy to the behaviour policy tightens it. Simplification: the
weight is per sequence, ``min(exp(mean_t(log pi_theta - log pi_behaviour)), max_weight)``,
detached — a length-normalised ratio, since the full sequence ratio under- or
overflows for long responses. ``pi_theta`` is read at the behaviour's sampling temperature
(``policy.tempered_logprobs``), projected in float32, so the ratio is exactly 1 at step 0 (up to the
trainer's and the engine's kernels: the training-inference mismatch, measured every step and corrected with
``--mismatch-correction``: the ratio then divides by the recomputed sampling model and each token is weighted,
``offline_rl/learners/mismatch.py``). The gradient is the temperature-1 NLL's, weighted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from offline_rl.learner import Learner, Policy
from offline_rl.learners import mismatch


@dataclass
class IWSFTConfig(mismatch.MismatchCorrection):
    max_weight: float = field(default=2.0, metadata={"help": "iwsft: clip of the importance weight", "above": 0,
                                                     "max": 1000})  # 1e308: beyond float32, a traceback


Config = IWSFTConfig


def loss(policy: Policy, batch: dict[str, torch.Tensor], cfg: Config):
    mask, behavior = batch["response_mask"], mismatch.proximal(policy, batch, cfg)  # [B, T]
    lengths = mask.sum(-1).clamp(min=1)  # [B]
    with torch.no_grad():
        tempered = policy.tempered_logprobs  # [B, T], at the behaviour's temperature
        mean_log_ratio = ((tempered - behavior) * mask).sum(-1) / lengths  # [B]
        weights = mean_log_ratio.exp().clamp(max=cfg.max_weight)  # [B]
    correction, corrected = mismatch.weights(policy, batch, cfg)  # [B, T]: 1 on the response without the correction
    nll = -(policy.logprobs * mask)  # [B, T]
    loss_sum = (weights.unsqueeze(-1) * correction * nll).sum()
    metrics = {"nll_sum": nll.detach().sum(), "weight_sum": (weights.unsqueeze(-1) * mask).sum(),
               "abs_log_ratio_sum": ((tempered.detach() - behavior).abs() * mask).sum(), **corrected,
               **mismatch.diagnostics(tempered, batch, threshold=cfg.mismatch_threshold)}
    return loss_sum, metrics


# divides by the behaviour policy: the loop checks every dataset's sampling settings and tempers the policy
LEARNER = Learner("iwsft", IWSFTConfig, views=("accepted",), loss=loss, inputs=("logprobs", "tempered_logprobs"),
                  more_inputs=mismatch.inputs, float32_projection=True)
