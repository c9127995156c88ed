"""DPO: direct preference optimisation on (accepted, rejected) pairs of the same prompt.

Rafailov et al., "Direct Preference Optimization: Your Language Model is Secretly a
Reward Model" (arXiv 2305.18290), Eq. 7: ``-log sigmoid(beta * ((log pi - log ref)(y_w)
- (log pi - log ref)(y_l)))`` over sequence log-probabilities. Pairs come from the
offline dataset: a response with reward 1 and one with reward 0 to the same prompt,
never two identical responses, never a truncated "chosen" (unless --include-truncated).
Reference log-probs are computed once, before training, from the initial model
(``--reference model``: on the training device, sharded over data-parallel ranks, through the
same chunked float32 projection and under the same autocast as the policy, so the starting
margin is 0), or taken from the stored behaviour log-probs (``--reference behavior``), which is
exact only when every dataset was sampled from that model at temperature 1 with no top-p
truncation — checked against the manifests, refused otherwise.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

import torch

from offline_rl.data import Example, sampled_examples
from offline_rl.data import collate as collate_examples
from rollout.cli import UsageError


@dataclass
class DPOConfig:
    beta: float = field(default=0.1, metadata={"help": "dpo: strength of the implicit KL to the reference", "above": 0})
    pairing: str = field(default="one", metadata={"help": "dpo: pairs per prompt: all, one (random), hardest", "choices": ["all", "one", "hardest"]})
    reference: str = field(default="model", metadata={"help": "dpo: reference log-probs from the initial 'model' or the stored 'behavior' log-probs", "choices": ["model", "behavior"]})


Config = DPOConfig
VIEWS = ("pairs",)  # the first is the default
FLOAT32_PROJECTION = True  # the policy's log-probs in the same precision as the reference's


@dataclass(frozen=True)
class Pair:
    chosen: Example
    rejected: Example


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
            pairs.append(min(candidates, key=lambda p: sum(p.chosen.behavior_logprobs) - sum(p.rejected.behavior_logprobs)))
        else:
            raise UsageError(f"unknown --pairing {pairing!r}; known: all, one, hardest")
    return pairs


def examples(dataset, context, cfg: Config | None = None):
    cfg = cfg or Config()
    if cfg.reference == "behavior":  # checked first: the settings of every dataset, before any pairing
        from offline_rl.data import behavior_temperature

        manifests = getattr(context, "manifests", None) or {"--data": context.manifest}
        if behavior_temperature(manifests, context.model_path, "dpo --reference behavior", approximate=False) != 1.0:
            raise UsageError("dpo --reference behavior is exact only for data sampled from this model at temperature "
                             "1 and top-p 1; use --reference model")
    rows = sampled_examples(dataset, accepted_only=False)
    include_truncated = getattr(context, "include_truncated", False)
    if not include_truncated:
        context.dropped_truncated = sum(e.reward == 1.0 and e.truncated for e in rows)
    pairs = make_pairs(rows, cfg.pairing, include_truncated=include_truncated)
    if not pairs:
        counts: dict[str, list[float]] = {}
        for pid, reward in zip(dataset["prompt_id"], dataset["reward"], strict=True):
            counts.setdefault(pid, []).append(reward)
        right = sum(all(r == 1.0 for r in rs) for rs in counts.values())
        wrong = sum(all(r != 1.0 for r in rs) for rs in counts.values())
        raise UsageError(f"no preference pairs for dpo: of {len(counts)} prompts {right} are all-right, {wrong} "
                         f"all-wrong, and {len(counts) - right - wrong} mix rewards only over identical responses")
    if cfg.reference == "behavior":
        return [Pair(replace(p.chosen, reference_logprob=sum(p.chosen.behavior_logprobs)),
                     replace(p.rejected, reference_logprob=sum(p.rejected.behavior_logprobs))) for p in pairs]
    return reference_from_model(pairs, context)


@torch.no_grad()
def reference_from_model(pairs: list[Pair], context, batch_size: int = 8) -> list[Pair]:
    """Sequence log-probs of every response under the initial model, computed once before training:
    on the training device, each data-parallel rank a strided share (then summed over ranks), through
    the chunked float32 projection, under the policy's autocast."""
    import contextlib

    from transformers import AutoModelForCausalLM

    from offline_rl.data import token_logprobs

    accelerator = getattr(context, "accelerator", None)
    device = accelerator.device if accelerator is not None else torch.device("cpu")
    rank, ranks = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    autocast = accelerator.autocast if accelerator is not None else contextlib.nullcontext
    chunk = getattr(context, "logit_chunk_size", 256)
    pad = context.tokenizer.pad_token_id if context.tokenizer.pad_token_id is not None else context.tokenizer.eos_token_id
    model = AutoModelForCausalLM.from_pretrained(context.model_path, dtype=torch.float32).to(device).eval()
    flat = [e for p in pairs for e in (p.chosen, p.rejected)]
    mine = list(range(rank, len(flat), ranks))
    sums = torch.zeros(len(flat), device=device)  # [2P]
    for begin in range(0, len(mine), batch_size):
        index = mine[begin : begin + batch_size]
        batch = {k: v.to(device) for k, v in collate_examples([flat[i] for i in index], pad).items()}
        with autocast():
            logprobs = token_logprobs(model, batch, chunk, float32=True)  # [b, T]
        sums[index] = (logprobs * batch["response_mask"]).sum(-1)
    if ranks > 1:
        sums = accelerator.reduce(sums, reduction="sum")  # each response was scored by exactly one rank
    del model
    values = sums.tolist()
    return [Pair(replace(p.chosen, reference_logprob=values[2 * i]), replace(p.rejected, reference_logprob=values[2 * i + 1]))
            for i, p in enumerate(pairs)]


def collate(pairs: list[Pair], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Chosen responses in rows [0, P), their rejected partners in rows [P, 2P)."""
    batch = collate_examples([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_token_id)
    batch["reference_logprobs"] = torch.tensor([p.chosen.reference_logprob for p in pairs]
                                               + [p.rejected.reference_logprob for p in pairs])  # [2P]
    batch["pairs"] = torch.tensor(float(len(pairs)))
    return batch


def units(batch: dict[str, torch.Tensor], cfg: Config | None = None) -> torch.Tensor:
    """DPO averages over pairs, not tokens."""
    return batch["pairs"]


def loss(logprobs: torch.Tensor, batch: dict[str, torch.Tensor], cfg: Config):
    sequence = (logprobs * batch["response_mask"]).sum(-1)  # [2P]
    n = sequence.shape[0] // 2
    log_ratio = sequence - batch["reference_logprobs"]  # [2P]
    margin = cfg.beta * (log_ratio[:n] - log_ratio[n:])  # [P]: implicit reward of chosen minus rejected
    loss_sum = -torch.nn.functional.logsigmoid(margin).sum()
    with torch.no_grad():
        metrics = {"reward_accuracy_sum": (margin > 0).float().sum(), "margin_sum": margin.sum(),
                   "nll_sum": -sequence[:n].sum()}
    return loss_sum, batch["pairs"], metrics
