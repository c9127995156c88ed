"""Offline PPO: the clipped surrogate against the stored behaviour policy, group-relative advantages.

Schulman et al., "Proximal Policy Optimization Algorithms" (arXiv 1707.06347), Eq. 7,
with GRPO's group-relative advantages in place of a critic (Shao et al., arXiv
2402.03300) and the token-mean aggregation of DAPO (Yu et al., arXiv 2503.14476).
Offline: the ratio is ``exp(log pi_theta - log pi_behaviour)`` with the behaviour
log-probs stored at collection time; no new samples are drawn. ``pi_theta`` is read at the
behaviour's sampling temperature (``policy.tempered_logprobs``, which carries the gradient), projected in
float32, so every ratio is exactly 1 at step 0 (up to the trainer's and the engine's kernels: the
training-inference mismatch, measured every step and corrected with ``--mismatch-correction``:
``offline_rl/learners/mismatch.py``). Simplification: no KL term to a reference model (the clip is the only trust
region).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from offline_rl.learner import Learner, Policy
from offline_rl.learners import mismatch
from offline_rl.views import Example, group_advantages


@dataclass
class PPOConfig(mismatch.MismatchCorrection):
    clip_eps: float = field(default=0.2, metadata={
        "help": "ppo: clip range epsilon of the ratio", "above": 0, "max": 1})
    scale_advantages: bool = field(default=True, metadata={"help": "ppo: divide group advantages by the group's std"})


Config = PPOConfig


def examples(groups: list[Example], cfg: Config, context) -> list[Example]:
    """Each sample with its group-relative advantage; all-right and all-wrong prompts carry no signal."""
    return [e for e in group_advantages(groups, cfg.scale_advantages) if e.advantage != 0.0]


def clipped_surrogate(tempered_logprobs: torch.Tensor, old_logprobs: torch.Tensor, batch: dict[str, torch.Tensor],
                      cfg) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token ``min(r A, clip(r, 1 - eps, 1 + eps) A)`` [B, T] (0 off the response), ``r`` the ratio of
    ``tempered_logprobs`` (the policy at the behaviour's temperature) to ``old_logprobs`` (the stored behaviour
    log-probs, or the recomputed sampling model: :func:`mismatch.proximal`), and per-token diagnostics: the ratio,
    whether the clipped term is the active one, and |log r|."""
    mask = batch["response_mask"]  # [B, T]
    advantages = batch["advantages"].unsqueeze(-1)  # [B, 1]
    log_ratio = (tempered_logprobs - old_logprobs) * mask  # [B, T]
    ratio = torch.exp(log_ratio)  # 1 off the response
    clipped = ratio.clamp(1 - cfg.clip_eps, 1 + cfg.clip_eps)
    surrogate = torch.minimum(ratio * advantages, clipped * advantages) * mask  # [B, T]
    with torch.no_grad():
        was_clipped = ((surrogate != ratio * advantages * mask) & (mask > 0)).float()
    return surrogate, {"ratio": ratio.detach() * mask, "clipped": was_clipped,
                       "abs_log_ratio": log_ratio.detach().abs()}


def loss(policy: Policy, batch: dict[str, torch.Tensor], cfg: Config):
    mask = batch["response_mask"]  # [B, T]
    surrogate, diag = clipped_surrogate(policy.tempered_logprobs, mismatch.proximal(policy, batch, cfg), batch, cfg)
    weight, corrected = mismatch.weights(policy, batch, cfg)  # [B, T]: 1 on the response without the correction
    loss_sum = -(surrogate * weight).sum()
    metrics = {"nll_sum": -(policy.logprobs.detach() * mask).sum(), "ratio_sum": diag["ratio"].sum(),
               "clip_fraction_sum": diag["clipped"].sum(), "abs_log_ratio_sum": diag["abs_log_ratio"].sum(),
               "abs_log_ratio_max": diag["abs_log_ratio"].max(), **corrected,
               **mismatch.diagnostics(policy.tempered_logprobs, batch, threshold=cfg.mismatch_threshold)}
    return loss_sum, metrics


# divides by the behaviour policy: the loop checks every dataset's sampling settings and tempers the policy
LEARNER = Learner("ppo", PPOConfig, views=("groups",), loss=loss, examples=examples,
                  inputs=("logprobs", "tempered_logprobs"), more_inputs=mismatch.inputs, float32_projection=True)
