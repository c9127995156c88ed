"""The learner record: everything the training loop needs to know of a learner, spelled out.

Each file in ``offline_rl/learners/`` ends with one ``LEARNER = Learner(...)``; ``learners.LEARNERS`` maps
``--learner NAME`` to it. The loop reads these fields and nothing else: no hooks looked up by name, no state
written back by the learner.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from offline_rl.views import Example, collate


def keep_view(examples: list[Example], cfg, context) -> list[Example]:
    """The view's examples as they are."""
    return examples


def response_tokens(batch: dict[str, torch.Tensor], cfg) -> torch.Tensor:
    """A token mean: the loss sum is divided by the step's response tokens."""
    return batch["response_mask"].sum()


@dataclass(frozen=True)
class Learner:
    name: str
    config: type  # its hyper-parameters (a dataclass); each field is a flag of bin/train
    views: tuple[str, ...]  # the views it can train on, the first its default
    loss: Callable  # (logprobs [B, T], batch, cfg) -> (loss_sum, n_units, metrics): a sum, never a mean
    examples: Callable = keep_view  # (view's examples, cfg, ViewContext) -> what it trains on
    units: Callable = response_tokens  # (batch, cfg) -> what the step's loss is averaged over
    token_grad: Callable | None = None  # cfg -> (log p -> d loss / d log p) or None: per-token losses, fused projection
    collate: Callable = collate  # (examples, pad id) -> tensors
    behavior_ratio: bool = False  # divides by the behaviour policy: needs its log-probs at an exact temperature
    float32_projection: bool = False  # its log-probs in float32 even under bf16 autocast (ratios, references)
    base_kl: bool = False  # needs KL(initial model || policy) over the vocabulary at each response token: "base_kl"
