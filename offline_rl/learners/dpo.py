"""DPO: direct preference optimisation on (accepted, rejected) pairs of the same prompt.

Rafailov et al., "Direct Preference Optimization: Your Language Model is Secretly a
Reward Model" (arXiv 2305.18290), Eq. 7: ``-log sigmoid(beta * ((log pi - log ref)(y_w)
- (log pi - log ref)(y_l)))`` over sequence log-probabilities. Pairs come from the
offline dataset: a response with reward 1 and one with reward 0 to the same prompt,
never two identical responses. Reference log-probs are computed once, before
training, from the initial model (``--reference model``), or taken from the stored
behaviour log-probs (``--reference behavior``), which is exact only when the data
were sampled from that model at temperature 1 with no top-p truncation — checked
against the manifest, refused otherwise.
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
    beta: float = field(default=0.1, metadata={"help": "dpo: strength of the implicit KL to the reference"})
    pairing: str = field(default="one", metadata={"help": "dpo: pairs per prompt: all, one (random), hardest"})
    reference: str = field(default="model", metadata={"help": "dpo: reference log-probs from the initial 'model' or the stored 'behavior' log-probs"})


Config = DPOConfig


@dataclass(frozen=True)
class Pair:
    chosen: Example
    rejected: Example


def make_pairs(examples: list[Example], pairing: str, seed: int = 0) -> list[Pair]:
    """(accepted, rejected) pairs within each prompt; never equal rewards or identical responses."""
    rng = random.Random(seed)
    by_prompt: dict[str, list[Example]] = {}
    for e in examples:
        by_prompt.setdefault(e.prompt_id, []).append(e)
    pairs = []
    for group in by_prompt.values():
        candidates = [Pair(w, lose) for w in group if w.reward == 1.0 for lose in group
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
    pairs = make_pairs(sampled_examples(dataset, accepted_only=False), cfg.pairing)
    if not pairs:
        counts: dict[str, list[float]] = {}
        for pid, reward in zip(dataset["prompt_id"], dataset["reward"], strict=True):
            counts.setdefault(pid, []).append(reward)
        right = sum(all(r == 1.0 for r in rs) for rs in counts.values())
        wrong = sum(all(r != 1.0 for r in rs) for rs in counts.values())
        raise UsageError(f"no preference pairs for dpo: of {len(counts)} prompts {right} are all-right, {wrong} "
                         f"all-wrong, and {len(counts) - right - wrong} mix rewards only over identical responses")
    if cfg.reference == "behavior":
        sampling = context.manifest.get("sampling", {})
        if sampling.get("temperature") != 1.0 or sampling.get("top_p", 1.0) != 1.0 or \
                context.manifest.get("model") != context.model_path:
            raise UsageError("--reference behavior is exact only for data sampled from this model at temperature 1 "
                             "and top-p 1; use --reference model")
        return [Pair(replace(p.chosen, reference_logprob=sum(p.chosen.behavior_logprobs)),
                     replace(p.rejected, reference_logprob=sum(p.rejected.behavior_logprobs))) for p in pairs]
    if cfg.reference != "model":
        raise UsageError(f"unknown --reference {cfg.reference!r}; known: model, behavior")
    return reference_from_model(pairs, context)


@torch.no_grad()
def reference_from_model(pairs: list[Pair], context, batch_size: int = 32) -> list[Pair]:
    """Sequence log-probs of every response under the initial model, computed once and cached."""
    from transformers import AutoModelForCausalLM

    from offline_rl.data import token_logprobs

    model = AutoModelForCausalLM.from_pretrained(context.model_path, dtype=torch.float32).eval()
    flat = [e for p in pairs for e in (p.chosen, p.rejected)]
    sums: list[float] = []
    for begin in range(0, len(flat), batch_size):
        batch = collate_examples(flat[begin : begin + batch_size], context.tokenizer.eos_token_id)
        sums += (token_logprobs(model, batch) * batch["response_mask"]).sum(-1).tolist()
    return [Pair(replace(p.chosen, reference_logprob=sums[2 * i]), replace(p.rejected, reference_logprob=sums[2 * i + 1]))
            for i, p in enumerate(pairs)]


def collate(pairs: list[Pair], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Chosen responses in rows [0, P), their rejected partners in rows [P, 2P)."""
    batch = collate_examples([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_token_id)
    batch["reference_logprobs"] = torch.tensor([p.chosen.reference_logprob for p in pairs]
                                               + [p.rejected.reference_logprob for p in pairs])  # [2P]
    batch["pairs"] = torch.tensor(float(len(pairs)))
    return batch


def units(batch: dict[str, torch.Tensor]) -> torch.Tensor:
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
