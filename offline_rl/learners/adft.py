"""Anchored DFT: DFT plus a KL anchor to the behaviour (base) policy.

Zhu et al., "Anchored Supervised Fine-Tuning" (ASFT, arXiv 2509.23753) read DFT as
reward-weighted regression whose auxiliary distribution lacks an anchor, so the policy
drifts during training; ASFT adds a lightweight KL term to the reference model. Here the
anchor is the stored behaviour policy — the base model that collected the data — and
the KL is estimated per sampled token with Schulman's k3 estimator,
``exp(ref - logp) - (ref - logp) - 1`` (unbiased, non-negative), instead of a full-
vocabulary KL against a second model in memory. ``--anchor-coef 0`` is plain DFT.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from offline_rl.data import require_behavior_logprobs, sampled_examples


@dataclass
class ADFTConfig:
    anchor_coef: float = field(default=0.1, metadata={"help": "adft: weight of the KL anchor to the behaviour policy"})


Config = ADFTConfig


def examples(dataset, context, cfg: Config | None = None):
    require_behavior_logprobs(dataset, "adft")
    return sampled_examples(dataset, accepted_only=True)


def loss(logprobs: torch.Tensor, batch: dict[str, torch.Tensor], cfg: Config):
    mask = batch["response_mask"]  # [B, T]
    token_probs = logprobs.detach().exp()  # [B, T]: sg(p_t)
    dft = -(token_probs * logprobs * mask).sum()
    log_ratio = (batch["behavior_logprobs"] - logprobs) * mask  # [B, T]: log(ref / pi)
    kl = ((log_ratio.exp() - log_ratio - 1) * mask).sum()  # k3 estimate of KL(pi || ref), 0 off the response
    metrics = {"nll_sum": -(logprobs.detach() * mask).sum(), "p_sum": (token_probs * mask).sum(),
               "kl_sum": kl.detach()}
    return dft + cfg.anchor_coef * kl, mask.sum(), metrics
