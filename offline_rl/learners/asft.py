"""ASFT: Anchored Supervised Fine-Tuning, as published — DFT plus a KL anchor to the frozen base model.

Zhu et al., "Anchored Supervised Fine-Tuning" (arXiv 2509.23753; LLaMA-Factory's ``asft``) read DFT as
reward-weighted regression whose auxiliary distribution lacks an anchor, so that the policy drifts; they add
the KL divergence from the frozen base model over the whole vocabulary at every response position:

    loss_t = -sg(p_t) * log p_t + lambda * KL(pi_base(. | x, y_<t) || pi_theta(. | x, y_<t))

a token mean, as DFT's. ``pi_base`` is the run's initial model, frozen: its logits are computed alongside the
policy's, chunk by chunk (``offline_rl.projection.token_logprobs_and_kl``: no ``[B, T, V]`` tensor held
whole), in float32. The KL's gradient in the policy's logits is ``softmax(z) - pi_base``. Any view,
demonstrations included (it needs no behaviour log-probs). ``--kl-coef 0`` is plain DFT.

How it differs from ``adft``: adft anchors to the *sampling* policy, KL(b || pi), estimated on the sampled
tokens from their stored log-probs, so it needs samples; asft anchors to the base model's full distribution,
computed from its logits, so it trains on demonstrations too and costs a second forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from offline_rl.learner import Learner, Policy
from offline_rl.learners.terms import dft_sum, likelihood_metrics


@dataclass
class ASFTConfig:
    kl_coef: float = field(default=0.1, metadata={
        "help": "asft: lambda, the weight of KL(pi_base || pi) over the vocabulary (the published default 0.1)",
        "min": 0, "max": 1000})  # 1e308: a NaN loss at step 1


Config = ASFTConfig


def loss(policy: Policy, batch: dict[str, torch.Tensor], cfg: Config):
    mask = batch["response_mask"]  # [B, T]
    kl = (policy.base_kl * mask).sum()  # [B, T] summed: KL(pi_base || pi) at every response position
    metrics = {**likelihood_metrics(policy.logprobs, mask), "kl_sum": kl.detach()}
    return dft_sum(policy.logprobs, mask) + cfg.kl_coef * kl, metrics


LEARNER = Learner("asft", ASFTConfig, views=("accepted", "all"), loss=loss, inputs=("logprobs", "base_kl"))
