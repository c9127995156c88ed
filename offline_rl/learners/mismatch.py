"""The training-inference mismatch: measured for every ratio learner, corrected for ppo, grpo, nft and iwsft.

The stored behaviour log-probs ``b`` are the engine's (vLLM's kernels, bf16 on a GPU); the trainer's own reading of
the same sampling model, ``s``, differs from them by the kernels' rounding (~0 here on a CPU in float32). A learner
that divides its policy by ``b`` then divides by a policy that is not the one it trains.

**Diagnostics** (:func:`diagnostics`, logged every step by every ratio learner, in ``metrics.jsonl``): for the
ratio ``r = pi / b`` of the policy read at the behaviour's temperature to the stored log-probs, over the response
tokens: its mean (``mismatch_ratio``) and maximum, the effective sample size of ``r`` as importance weights
(``mismatch_ess`` = mean(r)^2 / mean(r^2), 1 when every r is equal), the share above ``C`` and below ``1/C``
(what a threshold-C correction truncates, ``tis``, or masks, ``mis``), and two estimates of KL(b || pi) from the
tokens b drew: k1 = mean(log b - log pi) and k3 = mean(r - 1 - log r) (unbiased and never negative). At a run's
first step pi is the sampling model, so they measure the mismatch itself; later they add the policy's own move.

**Correction** (``--mismatch-correction``, as verl's rollout correction documents it in its decoupled mode): the
trainer recomputes the sampling model (``policy.sampler_logprobs``: the data's model, frozen, projected in float32
at the behaviour's temperature) and the learner's ratio divides by it instead of ``b``, each token's loss weighted
by ``rho = s / b`` (``token-*``) or by its response's ``prod_t s_t / b_t`` (``sequence-*``), detached and
bounded to exp(+-20), then truncated at ``C`` (``*-tis``: min(rho, C)) or masked outside [1/C, C] (``*-mis``:
rho where 1/C <= rho <= C, else 0). Departure: a masked token stays in the step's token count (verl drops it from
the denominator), as a clipped token of ppo does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from offline_rl.learner import Policy

CORRECTIONS = ("none", "token-tis", "token-mis", "sequence-tis", "sequence-mis")
DEFAULT_THRESHOLD = 2.0  # verl's rollout_is_threshold
SAFETY = 20.0  # |log rho| bound before any threshold: exp(20) ~ 5e8, as verl's


@dataclass
class MismatchCorrection:
    """The flags of the mismatch correction, shared by the learners that have it."""

    mismatch_correction: str = field(default="none", metadata={
        "help": "ppo, grpo, nft, iwsft: weight each token by the trainer's recomputed sampling model over the stored "
                "behaviour log-probs, truncated (tis) or masked (mis) at --mismatch-threshold, per token or per "
                "response; the ratio then divides by the recomputed model (none: by the stored log-probs)",
        "choices": list(CORRECTIONS)})
    mismatch_threshold: float = field(default=DEFAULT_THRESHOLD, metadata={
        "help": "ppo, grpo, nft, iwsft: C, where the correction truncates its weights (tis) or masks those outside "
                "[1/C, C] (mis); also the bound the diagnostics count against", "above": 1})


def inputs(cfg: MismatchCorrection) -> tuple[str, ...]:
    """The input the correction adds: the trainer's recomputation of the sampling model."""
    return ("sampler_logprobs",) if cfg.mismatch_correction != "none" else ()


def proximal(policy: Policy, batch: dict[str, torch.Tensor], cfg: MismatchCorrection) -> torch.Tensor:
    """What the learner's ratio divides by, [B, T]: the stored behaviour log-probs, or with the correction on the
    trainer's recomputation of the model that sampled them (verl's decoupled pi_old)."""
    return batch["behavior_logprobs"] if cfg.mismatch_correction == "none" else policy.sampler_logprobs


def weights(policy: Policy, batch: dict[str, torch.Tensor], cfg: MismatchCorrection,
            share: torch.Tensor | float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Each response token's correction weight, detached, [B, T] (1 on the response with the correction off, 0 off
    it), and its metrics (sums weighted by ``share``, each row's part of the learner's normaliser): the mean weight
    and the share of tokens truncated or masked."""
    mask = batch["response_mask"]  # [B, T]
    if cfg.mismatch_correction == "none":
        return mask, {}
    level, kind = cfg.mismatch_correction.split("-")
    with torch.no_grad():
        log_rho = (policy.sampler_logprobs - batch["behavior_logprobs"]) * mask  # [B, T]: log s/b
        if level == "sequence":
            log_rho = log_rho.sum(-1, keepdim=True).expand_as(mask)  # [B, T]: log prod_t s_t/b_t on every token
        rho = log_rho.clamp(-SAFETY, SAFETY).exp()
        if kind == "tis":
            weight, corrected = rho.clamp(max=cfg.mismatch_threshold), rho > cfg.mismatch_threshold
        else:
            kept = (rho <= cfg.mismatch_threshold) & (rho >= 1 / cfg.mismatch_threshold)
            weight, corrected = rho * kept, ~kept
        weight = weight * mask
    return weight, {"correction_weight_sum": (weight * share).sum(),
                    "correction_clipped_sum": (corrected.float() * mask * share).sum()}


def diagnostics(tempered_logprobs: torch.Tensor, batch: dict[str, torch.Tensor], share: torch.Tensor | float = 1.0,
                threshold: float = DEFAULT_THRESHOLD) -> dict[str, torch.Tensor]:
    """How far the policy (at the behaviour's temperature) is from the stored behaviour log-probs, over the response
    tokens, as metric sums weighted by ``share`` (each row's part of the learner's normaliser) and a maximum; the
    loop derives ``mismatch_ess`` from ``mismatch_ratio`` and ``mismatch_ratio_sq``."""
    mask = batch["response_mask"]  # [B, T]
    with torch.no_grad():
        log_r = ((tempered_logprobs - batch["behavior_logprobs"]) * mask).clamp(-SAFETY, SAFETY)  # [B, T]: log pi/b
        r = log_r.exp()
        weight = mask * share
        return {"mismatch_ratio_sum": (r * weight).sum(), "mismatch_ratio_sq_sum": (r * r * weight).sum(),
                "mismatch_ratio_max": (r * mask).max() if mask.any() else torch.zeros(()),
                "mismatch_above_sum": ((r > threshold).float() * weight).sum(),
                "mismatch_below_sum": ((r < 1 / threshold).float() * weight).sum(),
                "mismatch_kl_k1_sum": (-log_r * weight).sum(), "mismatch_kl_k3_sum": ((r - 1 - log_r) * weight).sum()}
