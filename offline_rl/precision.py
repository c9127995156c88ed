"""The precision switch, ``--precision fp32|bf16|fp16``: what the forward and backward compute in.

Every mode keeps float32 master weights and float32 optimizer moments; bf16 and fp16 run the model under
``torch.autocast`` (matmuls in that dtype, reductions and the log-probs in float32), on CPU as on an accelerator.
fp16's narrow range needs loss scaling (:class:`LossScale`). The default is accelerate's ``mixed_precision`` when
``accelerate launch`` exported one (so that a launch config's bf16 means the same here, FSDP2 included), else bf16
on an accelerator and fp32 on CPU; a ``--precision`` that contradicts accelerate's is refused with one line.
"""

from __future__ import annotations

import contextlib
import math
import os

import torch

from rollout.runtime import UsageError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FROM_ACCELERATE = {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}  # accelerate's mixed_precision -> ours


def resolve(requested: str | None, on_accelerator: bool) -> str:
    """The run's precision; one line if ``--precision`` and accelerate's ``mixed_precision`` disagree."""
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if launched is not None and launched not in FROM_ACCELERATE:
        raise UsageError(f"accelerate's mixed_precision {launched} is not a bin/train precision; use no, bf16 or fp16")
    ours = FROM_ACCELERATE.get(launched)
    if requested is not None and ours is not None and requested != ours:
        raise UsageError(f"--precision {requested} contradicts accelerate's mixed_precision {launched} (from "
                         "accelerate launch's config or --mixed_precision); make them agree or leave --precision out")
    return requested or ours or ("bf16" if on_accelerator else "fp32")


def autocast(precision: str, device: torch.device):
    """The context every forward of the policy runs in: autocast to bf16 or fp16, nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


class LossScale:
    """fp16's dynamic loss scale, as ``torch.amp.GradScaler`` sets it (2^16 at first, halved and the step skipped
    when a gradient overflows, doubled after 2,000 clean steps), decided on the step's total gradient norm, which
    every rank computes alike, so that all ranks skip together (FSDP2 included). Scale 1 and never a skip in
    fp32 and bf16. Saved in checkpoints (resume is exact)."""

    GROWTH_INTERVAL = 2000

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.scale = 2.0**16 if enabled else 1.0
        self.clean_steps = 0

    def unscale(self, parameters) -> None:
        """The gradients divided by the scale (before clipping and the norm's check)."""
        if self.enabled:
            for param in parameters:
                if param.grad is not None:
                    param.grad.mul_(1.0 / self.scale)

    def update(self, grad_norm: float) -> bool:
        """After the norm of the unscaled gradients: whether the step may be taken (an overflow skips it)."""
        if not self.enabled:
            return True
        if not math.isfinite(grad_norm):
            self.scale /= 2.0
            self.clean_steps = 0
            return False
        self.clean_steps += 1
        if self.clean_steps % self.GROWTH_INTERVAL == 0:
            self.scale *= 2.0
        return True

    def state_dict(self) -> dict:
        return {"scale": self.scale, "clean_steps": self.clean_steps}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.clean_steps = float(state["scale"]), int(state["clean_steps"])


@torch.no_grad()
def logprob_gap(model, batch: dict[str, torch.Tensor], precision: str, chunk_size: int, lower=None) -> dict:
    """How far the policy's log-probs of ``batch``'s response tokens under ``precision`` are from float32 (the mean
    and the largest absolute difference, nats), the model in eval mode; ``lower`` (called between the two) casts the
    frozen weights a LoRA run holds in the lower precision."""
    from offline_rl.projection import token_logprobs

    training = model.training
    model.eval()
    exact = token_logprobs(model, batch, chunk_size, float32=True)  # [B, T]
    if lower is not None:
        lower()
    with autocast(precision, batch["input_ids"].device):
        approximate = token_logprobs(model, batch, chunk_size)  # [B, T]
    model.train(training)
    mask = batch["response_mask"].bool()
    gap = (approximate - exact)[mask].abs()
    return {"logprob_gap_fp32": float(gap.mean()) if gap.numel() else 0.0,
            "logprob_gap_fp32_max": float(gap.max()) if gap.numel() else 0.0}
