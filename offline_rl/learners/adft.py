"""Anchored DFT: DFT plus a KL anchor to the behaviour (base) policy.

Zhu et al., "Anchored Supervised Fine-Tuning" (ASFT, arXiv 2509.23753) read DFT as
reward-weighted regression whose auxiliary distribution lacks an anchor, so the policy
drifts during training; ASFT adds a lightweight KL term to the reference model. Here the
anchor is the stored behaviour policy ``b`` — the base model that collected the data — and,
since the tokens were drawn from ``b``, the anchor is **KL(b ‖ pi)**, estimated per token by
``exp(d) - d - 1`` with ``d = log pi - log b``: unbiased under samples from ``b``
(``E_b[pi/b] = 1``), non-negative, and with gradient ``pi/b - 1`` in ``log pi``, bounded below
(k3 on ``log b - log pi`` would estimate chi²(b‖pi) − KL(b‖pi) here, with an unbounded gradient
``1 - b/pi`` as pi → 0). ``pi`` is read at the behaviour's sampling temperature, projected in
float32 (``policy.tempered_logprobs``); the DFT term uses the policy itself. ``--anchor-coef 0`` is plain DFT.
Simplification: a per-token estimate on the sampled tokens instead of a full-vocabulary KL.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from offline_rl.learner import Learner, Policy
from offline_rl.learners import mismatch
from offline_rl.learners.terms import dft_sum, likelihood_metrics


@dataclass
class ADFTConfig:
    anchor_coef: float = field(default=0.1, metadata={"help": "adft: weight of the KL anchor to the behaviour policy",
                                                      "min": 0, "max": 1000})  # 1e308: an infinite loss at step 1


Config = ADFTConfig


def anchor_kl(policy_logprobs: torch.Tensor, behavior_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over response tokens of ``exp(d) - d - 1``, ``d = log pi - log b``: unbiased for KL(b‖pi) per token
    when the tokens are drawn from b."""
    d = (policy_logprobs - behavior_logprobs) * mask  # [B, T]; 0 off the response
    return ((d.exp() - d - 1) * mask).sum()


def loss(policy: Policy, batch: dict[str, torch.Tensor], cfg: Config):
    mask, behavior = batch["response_mask"], batch["behavior_logprobs"]  # [B, T]
    dft = dft_sum(policy.logprobs, mask)
    kl = anchor_kl(policy.tempered_logprobs, behavior, mask)  # [B, T] summed, at the behaviour's temperature
    metrics = {**likelihood_metrics(policy.logprobs, mask), "kl_sum": kl.detach(),
               "abs_log_ratio_sum": ((policy.tempered_logprobs.detach() - behavior).abs() * mask).sum(),
               **mismatch.diagnostics(policy.tempered_logprobs, batch)}
    return dft + cfg.anchor_coef * kl, metrics


# divides by the behaviour policy: the loop checks every dataset's sampling settings and tempers the policy
LEARNER = Learner("adft", ADFTConfig, views=("accepted",), loss=loss, inputs=("logprobs", "tempered_logprobs"),
                  float32_projection=True)
