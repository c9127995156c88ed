"""The learner record: everything the training loop needs to know of a learner, spelled out.

Each file in ``offline_rl/learners/`` ends with one ``LEARNER = Learner(...)``; ``learners.LEARNERS`` maps
``--learner NAME`` to it. The loop reads these fields and nothing else: no hooks looked up by name, no state
written back by the learner, nothing added to the batch.

A loss is ``loss(policy, batch, cfg) -> (loss_sum, metrics)``:

- ``policy`` (:class:`Policy`) holds the policy's quantities the record asked for (its ``inputs``, and those its
  settings add: :meth:`Learner.asks`), by name, and nothing else (an input not asked for is ``None``); ``batch``
  holds the data only, as the view's collate made it;
- ``loss_sum`` is a sum over the learner's units, never a mean: the loop divides it once per optimizer step by
  the step's count of the record's ``normaliser`` (:func:`units`), across micro-batches and ranks;
- ``metrics`` are sums too (``_sum``, divided the same way) or maxima (``_max``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from offline_rl.views import Example, collate

# What a loss may ask the loop for, each [B, T] over the response positions (0 elsewhere), all in float32, but step.
INPUTS = {
    "logprobs": "log pi_theta(y_t) at temperature 1 (always given)",
    "tempered_logprobs": "log pi_theta(y_t) at the behaviour's sampling temperature, projected in float32: what a "
                         "ratio to the stored behaviour log-probs divides (the same tensor as logprobs at T = 1)",
    "base_kl": "KL(pi_base || pi_theta) over the vocabulary at each response position, pi_base the run's initial "
               "model, frozen",
    "snapshot_logprobs": "log pi_old(y_t) at temperature 1, detached: the policy as it was at its last snapshot, "
                         "taken every snapshot_every(cfg) steps from the run's first (psft's proximal policy)",
    "sampler_logprobs": "log pi_sampler(y_t) at the behaviour's temperature, projected in float32, detached: the "
                        "model that sampled the data as the trainer computes it, frozen (the mismatch correction)",
    "topk_entropy": "the entropy of pi_theta's next-token distribution renormalised over its topk(cfg) likeliest "
                    "tokens, detached, computed chunk by chunk (eaft)",
    "step": "the optimizer step, an int counted from the first run's start (--init-from counts on): scheduled weights",
}

# What a learner's loss sum is averaged over; each counted in a micro-batch by the loop.
NORMALISERS = {
    "token": "the step's response tokens",
    "response": "the step's responses (each response's tokens averaged first by the loss)",
    "pair": "the step's preference pairs (rows laid out as views.PairRows)",
    "source-token": "the step's sampled response tokens and its expert ones apart (batch['expert'] marks the "
                    "expert rows): a loss sum per source, [2], each divided by its own count (chord's two means)",
}


@dataclass(frozen=True)
class Policy:
    """The policy's quantities a loss asked for (:data:`INPUTS`), filled by the loop for one micro-batch.

    Which tensor carries the gradient is the loss's choice: both ``logprobs`` and ``tempered_logprobs`` do."""

    logprobs: torch.Tensor  # [B, T]
    tempered_logprobs: torch.Tensor | None = None  # [B, T]
    base_kl: torch.Tensor | None = None  # [B, T]
    snapshot_logprobs: torch.Tensor | None = None  # [B, T]
    sampler_logprobs: torch.Tensor | None = None  # [B, T]
    topk_entropy: torch.Tensor | None = None  # [B, T]
    step: int | None = None


def keep_view(examples: list[Example], cfg, context) -> list[Example]:
    """The view's examples as they are."""
    return examples


def per_token(cfg) -> str:
    return "token"


def nothing_more(cfg) -> tuple[str, ...]:
    return ()


@dataclass(frozen=True)
class Learner:
    name: str
    config: type  # its hyper-parameters (a dataclass); each field is a flag of bin/train
    views: tuple[str, ...]  # the views it can train on, the first its default
    loss: Callable  # (Policy, batch, cfg) -> (loss_sum, metrics): a sum, never a mean
    examples: Callable = keep_view  # (view's examples, cfg, ViewContext) -> what it trains on
    normaliser: Callable[[Any], str] = per_token  # cfg -> what the loss sum is averaged over: a key of NORMALISERS
    inputs: tuple[str, ...] = ("logprobs",)  # what the loss reads of the policy: keys of INPUTS
    more_inputs: Callable[[Any], tuple[str, ...]] = nothing_more  # cfg -> the inputs its settings add
    snapshot_every: Callable[[Any], int] | None = None  # cfg -> steps between snapshots (snapshot_logprobs)
    topk: Callable[[Any], int] | None = None  # cfg -> k of topk_entropy
    token_grad: Callable | None = None  # cfg -> (log p -> d loss / d log p) or None: per-token losses, fused projection
    check: Callable[[Any], None] | None = None  # cfg -> None, or one line (UsageError) before any work: its own inputs
    collate: Callable = collate  # (examples, pad id) -> tensors
    float32_projection: bool = False  # its log-probs in float32 even under bf16 autocast (ratios, references)
    lr_scale: float = 1.0  # its recipe's rate against the others' in a comparison (bin/compare), 1: the same

    def __post_init__(self):
        unknown = [name for name in self.inputs if name not in INPUTS]
        if unknown or "logprobs" not in self.inputs:
            raise ValueError(f"learner {self.name}: inputs {self.inputs} must include logprobs and name only "
                             f"{', '.join(INPUTS)}")
        if self.behavior_ratio and self.base_kl:  # one projection gives the tempered policy or the KL, not both
            raise ValueError(f"learner {self.name}: tempered_logprobs and base_kl cannot be asked for together")
        if ("snapshot_logprobs" in self.inputs) != (self.snapshot_every is not None) or \
                ("topk_entropy" in self.inputs) != (self.topk is not None):
            raise ValueError(f"learner {self.name}: snapshot_logprobs needs snapshot_every, topk_entropy needs topk")

    def asks(self, cfg) -> tuple[str, ...]:
        """Every input the loss reads with settings ``cfg``: its own, and those its settings add (the sampling
        model's log-probs of a ratio learner whose mismatch correction is on)."""
        return self.inputs + tuple(name for name in self.more_inputs(cfg) if name not in self.inputs)

    @property
    def behavior_ratio(self) -> bool:
        """Divides by the behaviour policy: needs its log-probs, at a temperature where the ratio is exact."""
        return "tempered_logprobs" in self.inputs

    @property
    def base_kl(self) -> bool:
        """Anchored to the run's initial model: the loop runs it frozen beside the policy."""
        return "base_kl" in self.inputs


def units(batch: dict[str, torch.Tensor], normaliser: str) -> torch.Tensor:
    """How many of ``normaliser``'s units a micro-batch holds: what its loss sum is divided by, summed over the
    step's micro-batches and ranks."""
    mask = batch["response_mask"]  # [B, T]
    if normaliser == "token":
        return mask.sum()
    if normaliser == "response":
        return (mask.sum(-1) > 0).sum()
    if normaliser == "pair":
        return batch["pairs"]
    if normaliser == "source-token":
        expert = batch["expert"].unsqueeze(-1)  # [B, 1]: 1 on expert rows
        return torch.stack([(mask * (1 - expert)).sum(), (mask * expert).sum()])  # [2]: sampled, expert
    raise ValueError(f"unknown normaliser {normaliser!r}; known: {', '.join(NORMALISERS)}")
