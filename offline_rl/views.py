"""Views of an offline dataset as training examples, and their collation into tensors: every view in one place.

What a learner trains on is a view of the dataset, chosen apart from its loss (``--view``): accepted rows, all
rows, preference pairs, prompt groups. :func:`build` makes a view's examples; a learner's own ``examples`` step
then shapes them (advantages, pairs with reference log-probs, filters) with the functions here. Whether a ratio
to the behaviour policy is exact for the datasets is decided in :mod:`offline_rl.policies`.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, replace
from typing import Any

import torch

from offline_rl.projection import token_logprobs
from rollout.runtime import UsageError


@dataclass(frozen=True)
class Example:
    prompt_id: str
    prompt_token_ids: list[int]
    response_token_ids: list[int]
    behavior_logprobs: list[float] | None = None
    reward: float = 1.0
    advantage: float = 0.0
    reference_logprob: float = 0.0  # sequence log-prob under the reference model (DPO)
    truncated: bool = False  # cut at the token limit, no EOS
    group_accuracy: float = 0.0  # share of rewarded samples among the prompt's (the groups view)
    group_rewards: tuple | None = None  # every sample's reward of the prompt, truncated ones too (the groups view)


# Each learner declares the views it can use (the first its default) and what it needs from the data.
VIEWS = {
    "accepted": "rows with reward 1 (verified samples, demonstrations agreeing with their gold), not truncated",
    "all": "every row with a response, whatever its reward",
    "pairs": "a rewarded and an unrewarded response to one prompt",
    "groups": "every sample of each prompt, with the group's rewards",
}


@dataclass(frozen=True)
class Pair:
    chosen: Example
    rejected: Example


@dataclass(frozen=True)
class PairRows:
    """The row layout of a pairs batch (:func:`collate_pairs`): ``pairs`` chosen responses in rows [0, P), each one's
    rejected partner P rows below it, in rows [P, 2P). A loss reads the halves through this, never by slicing."""

    pairs: int

    @classmethod
    def of(cls, batch: dict[str, torch.Tensor]) -> PairRows:
        return cls(int(batch["pairs"]))

    def chosen(self, rows: torch.Tensor) -> torch.Tensor:
        return rows[: self.pairs]

    def rejected(self, rows: torch.Tensor) -> torch.Tensor:
        return rows[self.pairs :]


@dataclass(frozen=True)
class ViewContext:
    """What making a view may read besides the rows: the model and tokenizer (reference passes), the datasets'
    manifests (exactness checks), the accelerator (a reference pass sharded over ranks)."""

    tokenizer: Any
    manifests: dict
    model_path: str
    include_truncated: bool = False
    accelerator: Any = None
    logit_chunk_size: int = 256
    seed: int = 0  # the run's seed: which pair --pairing one draws
    frozen: Any = None  # () -> a context yielding the initial model to score with (None: loaded from model_path)
    autocast: Any = None  # () -> the run's autocast context (None: the accelerator's)


def check_view(learner, view: str, manifests: dict[str, dict]) -> None:
    """One line (UsageError) if ``learner`` cannot train on ``view`` of these datasets, naming what is missing."""
    if view not in VIEWS:
        raise UsageError(f"unknown view {view!r}; known: {', '.join(VIEWS)}")
    if view not in learner.views:
        raise UsageError(f"{learner.name} trains on the {' or '.join(learner.views)} view, not on {view}: "
                         f"its loss needs {VIEWS[learner.views[0]]}")
    if learner.behavior_ratio:
        from offline_rl.policies import require_samples

        require_samples(learner.name, manifests)
    if view in ("pairs", "groups") and manifests and all(m.get("kind") == "demonstrations" for m in manifests.values()):
        holds = f"{', '.join(manifests)} hold{'s' * (len(manifests) == 1)}"
        raise UsageError(f"{learner.name} trains on the {view} view, and {holds} only demonstrations, one accepted "
                         "solution per prompt: no preference pairs, no groups to compare; give sampled data")


def build(view: str, dataset, include_truncated: bool = False) -> tuple[list[Example], int]:
    """The examples of ``view`` (pairs: every row, paired by the learner that uses them), and how many accepted
    responses cut at the token limit were left out."""
    if view == "accepted":
        return sampled_examples(dataset, accepted_only=True, include_truncated=include_truncated)
    rows, _ = sampled_examples(dataset, accepted_only=False)
    if view == "groups":  # the group's statistics count every sample; a truncated one carries no loss (DAPO)
        groups = group_accuracies(rows)
        kept = [e for e in groups if include_truncated or not e.truncated]
        return kept, len(groups) - len(kept)
    if view == "pairs":
        return rows, 0 if include_truncated else sum(e.reward == 1.0 and e.truncated for e in rows)
    return rows, 0


def view_examples(dataset, view: str) -> list[Example]:
    """The examples of ``view`` with its default settings."""
    return build(view, dataset)[0]


def group_accuracies(examples: list[Example]) -> list[Example]:
    """Each example with its prompt's share of rewarded samples and every sample's reward (the group's statistics)."""
    groups: dict[str, list[float]] = {}
    for e in examples:
        groups.setdefault(e.prompt_id, []).append(e.reward)
    stats = {pid: (sum(r == 1.0 for r in rewards) / len(rewards), tuple(rewards)) for pid, rewards in groups.items()}
    return [replace(e, group_accuracy=stats[e.prompt_id][0], group_rewards=stats[e.prompt_id][1]) for e in examples]


def sampled_examples(dataset, accepted_only: bool, include_truncated: bool = False) -> tuple[list[Example], int]:
    """The stored samples as examples, exact token ids as sampled (never re-tokenised), and how many were left out.

    The accepted view leaves out truncated responses (``finish_reason == "length"``: a right answer
    followed by rambling up to the token limit, with no EOS to learn) unless ``include_truncated``.
    """
    rows = dataset.select_columns(["prompt_id", "prompt_token_ids", "response_token_ids", "behavior_logprobs",
                                   "reward", "finish_reason"])
    examples, dropped = [], 0
    for r in rows:
        if not r["response_token_ids"] or (accepted_only and r["reward"] != 1.0):
            continue
        if accepted_only and r["finish_reason"] == "length" and not include_truncated:
            dropped += 1
            continue
        examples.append(Example(r["prompt_id"], r["prompt_token_ids"], r["response_token_ids"], r["behavior_logprobs"],
                                r["reward"], truncated=r["finish_reason"] == "length"))
    return examples, dropped


def collate(examples: list[Example], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded prompt+response sequences with next-token targets.

    ``targets[b, t]`` is the token at ``t + 1``; ``response_mask[b, t]`` is 1 where that
    target is a response token, so a learner's loss covers exactly the response.
    """
    sequences = [e.prompt_token_ids + e.response_token_ids for e in examples]
    width = max(map(len, sequences))
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)  # [B, T]
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)  # [B, T]
    targets = torch.full((len(examples), width), pad_token_id, dtype=torch.long)  # [B, T]
    response_mask = torch.zeros((len(examples), width))  # [B, T]
    behavior_logprobs = torch.zeros((len(examples), width))  # [B, T]
    rewards = torch.tensor([e.reward for e in examples], dtype=torch.float)  # [B]
    advantages = torch.tensor([e.advantage for e in examples], dtype=torch.float)  # [B]
    group_accuracy = torch.tensor([e.group_accuracy for e in examples], dtype=torch.float)  # [B]
    for b, (e, seq) in enumerate(zip(examples, sequences, strict=True)):
        n_prompt, n_resp = len(e.prompt_token_ids), len(e.response_token_ids)
        input_ids[b, : len(seq)] = torch.tensor(seq)
        attention_mask[b, : len(seq)] = 1
        targets[b, : len(seq) - 1] = torch.tensor(seq[1:])
        response_mask[b, n_prompt - 1 : n_prompt - 1 + n_resp] = 1.0
        if e.behavior_logprobs is not None:
            behavior_logprobs[b, n_prompt - 1 : n_prompt - 1 + n_resp] = torch.tensor(e.behavior_logprobs)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "targets": targets,
            "response_mask": response_mask, "behavior_logprobs": behavior_logprobs, "rewards": rewards,
            "advantages": advantages, "group_accuracy": group_accuracy}


def group_advantages(examples: list[Example], scale_by_std: bool) -> list[Example]:
    """GRPO's group-relative advantages: reward minus the mean reward of the same prompt's samples,
    optionally divided by their std (Shao et al., arXiv 2402.03300, Eq. 3 outcome supervision)."""
    groups: dict[str, list[float]] = {}
    for e in examples:
        groups.setdefault(e.prompt_id, []).append(e.reward)
    result = []
    for e in examples:  # the groups view's statistics (truncated samples included) where it made them
        rewards = list(e.group_rewards) if e.group_rewards is not None else groups[e.prompt_id]
        advantage = e.reward - statistics.fmean(rewards)
        if scale_by_std:
            advantage /= statistics.pstdev(rewards) + 1e-6
        result.append(replace(e, advantage=advantage))
    return result


def make_pairs(examples: list[Example], pairing: str, seed: int = 0, include_truncated: bool = False) -> list[Pair]:
    """(accepted, rejected) pairs within each prompt; never equal rewards or identical responses, and
    never a truncated chosen response unless ``include_truncated``."""
    rng = random.Random(seed)
    by_prompt: dict[str, list[Example]] = {}
    for e in examples:
        by_prompt.setdefault(e.prompt_id, []).append(e)
    pairs = []
    for group in by_prompt.values():
        candidates = [Pair(w, lose) for w in group if w.reward == 1.0 and (include_truncated or not w.truncated)
                      for lose in group
                      if lose.reward != 1.0 and lose.response_token_ids != w.response_token_ids]
        if not candidates:
            continue
        if pairing == "all":
            pairs += candidates
        elif pairing == "one":
            pairs.append(rng.choice(candidates))
        elif pairing == "hardest":  # the accepted answer the sampler found least likely vs the likeliest rejection
            pairs.append(min(candidates,
                             key=lambda p: sum(p.chosen.behavior_logprobs) - sum(p.rejected.behavior_logprobs)))
        else:
            raise UsageError(f"unknown --pairing {pairing!r}; known: all, one, hardest")
    return pairs


@torch.no_grad()
def reference_from_model(pairs: list[Pair], context: ViewContext, batch_size: int = 8) -> list[Pair]:
    """Sequence log-probs of every response under the initial model, computed once before training:
    on the training device, each data-parallel rank a strided share (then summed over ranks), through
    the chunked float32 projection, under the policy's autocast. The model is the training model before its first
    step (under LoRA: with its adapter off) when the context gives it, else loaded apart and freed."""
    import contextlib

    from offline_rl.policies import loaded_frozen

    accelerator = context.accelerator
    device = accelerator.device if accelerator is not None else torch.device("cpu")
    rank, ranks = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    autocast = context.autocast or (accelerator.autocast if accelerator is not None else contextlib.nullcontext)
    chunk = context.logit_chunk_size
    pad = (context.tokenizer.pad_token_id if context.tokenizer.pad_token_id is not None
           else context.tokenizer.eos_token_id)
    flat = [e for p in pairs for e in (p.chosen, p.rejected)]
    mine = list(range(rank, len(flat), ranks))
    sums = torch.zeros(len(flat), device=device)  # [2P]
    with (context.frozen or (lambda: loaded_frozen(context.model_path, device)))() as model:
        for begin in range(0, len(mine), batch_size):
            index = mine[begin : begin + batch_size]
            batch = {k: v.to(device) for k, v in collate([flat[i] for i in index], pad).items()}
            with autocast():
                logprobs = token_logprobs(model, batch, chunk, float32=True)  # [b, T]
            sums[index] = (logprobs * batch["response_mask"]).sum(-1)
    if ranks > 1:
        sums = accelerator.reduce(sums, reduction="sum")  # each response was scored by exactly one rank
    values = sums.tolist()
    return [Pair(replace(p.chosen, reference_logprob=values[2 * i]),
                 replace(p.rejected, reference_logprob=values[2 * i + 1]))
            for i, p in enumerate(pairs)]


def collate_pairs(pairs: list[Pair], pad_token_id: int) -> dict[str, torch.Tensor]:
    """The pairs as rows laid out as :class:`PairRows` says, with each response's reference log-prob and the count
    of pairs (``pairs``: what a per-pair loss is averaged over)."""
    batch = collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_token_id)
    batch["reference_logprobs"] = torch.tensor([p.chosen.reference_logprob for p in pairs]
                                               + [p.rejected.reference_logprob for p in pairs])  # [2P]
    batch["pairs"] = torch.tensor(float(len(pairs)))
    return batch


