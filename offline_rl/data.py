"""Views of an offline dataset as training examples, and their collation into tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Example:
    prompt_id: str
    prompt_token_ids: list[int]
    response_token_ids: list[int]
    behavior_logprobs: list[float] | None = None
    reward: float = 1.0
    advantage: float = 0.0
    reference_logprob: float = 0.0  # sequence log-prob under the reference model (DPO)


def sampled_examples(dataset, accepted_only: bool) -> list[Example]:
    """The stored samples as examples, exact token ids as sampled (never re-tokenised)."""
    rows = dataset.select_columns(["prompt_id", "prompt_token_ids", "response_token_ids", "behavior_logprobs", "reward"])
    return [
        Example(r["prompt_id"], r["prompt_token_ids"], r["response_token_ids"], r["behavior_logprobs"], r["reward"])
        for r in rows
        if r["response_token_ids"] and (not accepted_only or r["reward"] == 1.0)
    ]


def require_behavior_logprobs(dataset, learner: str) -> None:
    """Learners that weigh by pi_theta / pi_behaviour cannot run on rows collected without log-probs."""
    from rollout.cli import UsageError

    if any(not lp for lp in dataset["behavior_logprobs"]):
        raise UsageError(f"{learner} needs behaviour log-probs; this dataset has rows without them")


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
            "advantages": advantages}


def token_logprobs(model, batch: dict[str, torch.Tensor], chunk_size: int = 0) -> torch.Tensor:
    """log pi(target_t | prefix) for every response position, in float32: [B, T] (0 elsewhere).

    With ``chunk_size`` > 0 the vocabulary projection runs over chunks of that many response
    tokens under activation checkpointing, so no [B, T, V] logits (nor their fp32 copy or softmax)
    ever exist: peak extra memory is one [chunk, V] block. 0 projects everything at once.
    """
    if chunk_size <= 0:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # [B, T, V]
        return -torch.nn.functional.cross_entropy(
            logits.float().flatten(0, 1), batch["targets"].flatten(), reduction="none"
        ).view_as(batch["targets"])
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True,
                logits_to_keep=1)  # through the (possibly DDP-wrapped) model; logits of one position only
    hidden = out.hidden_states[-1]  # [B, T, H], after the final norm
    lm_head = _unwrap(model).get_output_embeddings()
    where = batch["response_mask"].bool()  # [B, T]
    selected_hidden, selected_targets = hidden[where], batch["targets"][where]  # [N, H], [N]
    pieces = [
        torch.utils.checkpoint.checkpoint(_chunk_logprobs, lm_head, selected_hidden[i : i + chunk_size],
                                          selected_targets[i : i + chunk_size], use_reentrant=False)
        for i in range(0, selected_hidden.shape[0], chunk_size)
    ]
    logprobs = torch.zeros(where.shape, dtype=torch.float32, device=hidden.device)  # [B, T]
    logprobs[where] = torch.cat(pieces) if pieces else logprobs[where]
    return logprobs


def _chunk_logprobs(lm_head, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = lm_head(hidden).float()  # [n, V]: one chunk, recomputed in backward
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)  # [n]


def _unwrap(model):
    return getattr(model, "module", model)  # DDP / FSDP wrappers keep the model in .module

def group_advantages(examples: list[Example], scale_by_std: bool) -> list[Example]:
    """GRPO's group-relative advantages: reward minus the mean reward of the same prompt's samples,
    optionally divided by their std (Shao et al., arXiv 2402.03300, Eq. 3 outcome supervision)."""
    import statistics
    from dataclasses import replace

    groups: dict[str, list[float]] = {}
    for e in examples:
        groups.setdefault(e.prompt_id, []).append(e.reward)
    result = []
    for e in examples:
        rewards = groups[e.prompt_id]
        advantage = e.reward - statistics.fmean(rewards)
        if scale_by_std:
            advantage /= statistics.pstdev(rewards) + 1e-6
        result.append(replace(e, advantage=advantage))
    return result
