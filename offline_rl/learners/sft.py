"""SFT: NLL on given reference solutions (the world's, for the embedded default).

The baseline the DFT paper rectifies: maximum likelihood on expert
demonstrations, here the world's reference chain-of-thought solutions for the
dataset's prompts, tokenised after the stored prompt tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from offline_rl import world
from offline_rl.data import Example
from rollout.cli import UsageError


@dataclass
class SFTConfig:
    pass  # no hyper-parameters of its own


Config = SFTConfig


def examples(dataset, context, cfg: Config | None = None):
    solutions = world.reference_solutions(context.manifest.get("source", {}))
    if not solutions:
        raise UsageError("sft needs reference solutions; this dataset's prompt source provides none")
    seen: dict[str, Example] = {}
    eos = context.tokenizer.eos_token_id
    for r in dataset.select_columns(["prompt_id", "prompt_token_ids"]):
        pid = r["prompt_id"]
        if pid in seen or pid not in solutions:
            continue
        response = context.tokenizer(" " + solutions[pid])["input_ids"] + [eos]
        seen[pid] = Example(pid, r["prompt_token_ids"], response)
    return list(seen.values())


def loss(logprobs: torch.Tensor, batch: dict[str, torch.Tensor], cfg: Config):
    mask = batch["response_mask"]  # [B, T]
    nll_sum = -(logprobs * mask).sum()
    return nll_sum, mask.sum(), {"nll_sum": nll_sum.detach()}
