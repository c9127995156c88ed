"""PSFT: Proximal SFT, SFT as a policy gradient with advantage 1 under PPO's clipped trust region.

Zhu et al., "Proximal Supervised Fine-Tuning" (arXiv 2508.17784; code zwhong714/PSFT, a verl recipe): the NLL's
gradient is a policy gradient whose advantage is 1 on every target token, so PPO's clipped surrogate with A = 1
bounds how far one batch moves the policy from the one before it, pi_old:

    loss_t = -min(r_t, clip(r_t, 1 - eps_low, 1 + eps_high)),   r_t = pi_theta(y_t) / pi_old(y_t)

With A = 1 only the upper clip is ever active: a token whose probability has already risen past (1 + eps_high)
times pi_old's gets no gradient, any other the gradient -r_t (SFT's, -1, at r = 1). ``pi_old`` is a snapshot of
the policy taken every ``--snapshot-every`` steps, as the recipe's verl loop does it: the old log-probs of a batch
of ``train_batch_size`` prompts are computed before its ``train_batch_size / ppo_mini_batch_size`` updates (256 /
32: every 8 steps, the default here; eps_low 0.2 and eps_high 0.28, the recipe's clip_ratio_low/high). The loop
takes the snapshot (``policy.snapshot_logprobs``: the policy's own log-probs of the next K steps' micro-batches,
computed before the first of them updates it) and saves it in checkpoints, so a resumed run goes on exactly. Token
mean, as the recipe's ``token-mean``. Any view: demonstrations (the paper's setting) or accepted samples; it
needs no behaviour log-probs. Not checked: the paper's warm-up (which its text mentions, which we could not read).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from offline_rl.learner import Learner, Policy
from offline_rl.learners.terms import likelihood_metrics


@dataclass
class PSFTConfig:
    clip_eps: float = field(default=0.2, metadata={"help": "psft: eps_low, the ratio's lower clip (never active "
                                                           "with advantage 1; kept as the recipe's)", "above": 0,
                                                   "max": 1})
    clip_eps_high: float = field(default=0.28, metadata={"help": "psft: eps_high, the ratio's upper clip: a token "
                                                                 "past 1 + eps_high times the snapshot's probability "
                                                                 "gets no gradient", "above": 0, "max": 10})
    snapshot_every: int = field(default=8, metadata={"help": "psft: steps between snapshots of the policy (the "
                                                             "proximal pi_old; the recipe's 256 / 32)", "min": 1})


Config = PSFTConfig


def loss(policy: Policy, batch: dict[str, torch.Tensor], cfg: Config):
    mask = batch["response_mask"]  # [B, T]
    ratio = torch.exp((policy.logprobs - policy.snapshot_logprobs) * mask)  # [B, T]; 1 off the response
    surrogate = torch.minimum(ratio, ratio.clamp(1 - cfg.clip_eps, 1 + cfg.clip_eps_high)) * mask  # A = 1
    with torch.no_grad():
        metrics = {**likelihood_metrics(policy.logprobs, mask), "ratio_sum": (ratio * mask).sum(),
                   "clip_fraction_sum": ((ratio > 1 + cfg.clip_eps_high).float() * mask).sum(),
                   "abs_log_ratio_max": ((policy.logprobs - policy.snapshot_logprobs) * mask).abs().max()}
    return -surrogate.sum(), metrics


LEARNER = Learner("psft", PSFTConfig, views=("accepted", "all"), loss=loss, inputs=("logprobs", "snapshot_logprobs"),
                  snapshot_every=lambda cfg: cfg.snapshot_every, float32_projection=True)
