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
    truncated: bool = False  # cut at the token limit, no EOS
    group_accuracy: float = 0.0  # share of rewarded samples among the prompt's (the groups view)


# What a learner trains on is a view of the dataset, chosen apart from its loss (--view). Each learner
# declares the views it can use (VIEWS, the first its default) and whether it needs behaviour log-probs.
VIEWS = {
    "accepted": "rows with reward 1 (verified samples, demonstrations agreeing with their gold), not truncated",
    "all": "every row with a response, whatever its reward",
    "pairs": "a rewarded and an unrewarded response to one prompt",
    "groups": "every sample of each prompt, with the group's rewards",
}


def check_view(name: str, learner, view: str, manifests: dict[str, dict]) -> None:
    """One line (UsageError) if ``learner`` cannot train on ``view`` of these datasets, naming what is missing."""
    from rollout.cli import UsageError

    if view not in VIEWS:
        raise UsageError(f"unknown view {view!r}; known: {', '.join(VIEWS)}")
    if view not in learner.VIEWS:
        raise UsageError(f"{name} trains on the {' or '.join(learner.VIEWS)} view, not on {view}: "
                         f"its loss needs {VIEWS[learner.VIEWS[0]]}")
    if getattr(learner, "USES_BEHAVIOR_RATIO", False):
        for path, manifest in manifests.items():
            if manifest.get("kind") == "demonstrations":
                raise UsageError(f"{name} needs the sampling policy's log-probs, and {path} holds demonstrations, "
                                 "which have none; train sft, dft, rft or prob on them, or give sampled data")


def view_examples(dataset, view: str, context=None) -> list[Example]:
    """The rows of the accepted, all or groups view as examples (pairs are built by the learner that uses them)."""
    if view == "accepted":
        return sampled_examples(dataset, accepted_only=True, context=context)
    rows = sampled_examples(dataset, accepted_only=False, context=context)
    if view == "groups":
        return group_accuracies(rows)
    return rows


def group_accuracies(examples: list[Example]) -> list[Example]:
    """Each example with its prompt's share of rewarded samples."""
    from dataclasses import replace

    groups: dict[str, list[float]] = {}
    for e in examples:
        groups.setdefault(e.prompt_id, []).append(float(e.reward == 1.0))
    return [replace(e, group_accuracy=sum(groups[e.prompt_id]) / len(groups[e.prompt_id])) for e in examples]


def sampled_examples(dataset, accepted_only: bool, context=None) -> list[Example]:
    """The stored samples as examples, exact token ids as sampled (never re-tokenised).

    The accepted view leaves out truncated responses (``finish_reason == "length"``: a right answer
    followed by rambling up to the token limit, with no EOS to learn) unless ``context.include_truncated``;
    how many it left out is counted in ``context.dropped_truncated``.
    """
    rows = dataset.select_columns(["prompt_id", "prompt_token_ids", "response_token_ids", "behavior_logprobs",
                                   "reward", "finish_reason"])
    include_truncated = getattr(context, "include_truncated", False)
    examples, dropped = [], 0
    for r in rows:
        if not r["response_token_ids"] or (accepted_only and r["reward"] != 1.0):
            continue
        if accepted_only and r["finish_reason"] == "length" and not include_truncated:
            dropped += 1
            continue
        examples.append(Example(r["prompt_id"], r["prompt_token_ids"], r["response_token_ids"], r["behavior_logprobs"],
                                r["reward"], truncated=r["finish_reason"] == "length"))
    if context is not None:
        context.dropped_truncated = getattr(context, "dropped_truncated", 0) + dropped
    return examples


def require_behavior_logprobs(dataset, learner: str) -> None:
    """Learners that weigh by pi_theta / pi_behaviour cannot run on rows collected without log-probs."""
    from rollout.cli import UsageError

    if any(not lp for lp in dataset["behavior_logprobs"]):
        raise UsageError(f"{learner} needs the sampling policy's log-probs; this dataset has rows without them "
                         "(demonstrations, or samples collected without them)")


def behavior_temperature(manifests: dict[str, dict], model_path: str, learner: str, approximate: bool) -> float:
    """The temperature T at which ``log softmax(logits / T)`` of the sampling model equals the stored
    behaviour log-probs, checked on every dataset's manifest; refused (one line) where no T makes the
    ratio exact: top-p truncation, another sampling model, unknown or mixed settings. ``approximate``
    accepts truncation and another model knowingly (the ratio is then only approximate)."""
    from pathlib import Path

    from rollout.cli import UsageError

    def same_model(a, b) -> bool:
        return a == b or (Path(str(a)).exists() and Path(str(a)).resolve() == Path(str(b)).resolve())

    temperatures = set()
    for path, manifest in manifests.items():
        sampling = manifest.get("sampling")
        if not isinstance(sampling, dict) or not isinstance(sampling.get("temperature"), int | float):
            raise UsageError(f"{learner}: {path} does not record the temperature it was sampled at; "
                             "its behaviour log-probs cannot be matched")
        identity = manifest.get("identity", {})
        for appended in manifest.get("appended_identities", []):
            if appended.get("sampling") != identity.get("sampling") or appended.get("model") != identity.get("model"):
                raise UsageError(f"{learner}: {path} holds rows sampled with other settings (a forced append); "
                                 "its behaviour log-probs are not of one policy")
        if not approximate:
            if sampling.get("top_p", 1.0) != 1.0 or sampling.get("top_k", -1) not in (-1, 0, None):
                raise UsageError(f"{learner}: {path} was sampled with top-p {sampling.get('top_p')}, top-k "
                                 f"{sampling.get('top_k', 'full')}: a ratio to a truncated distribution is not exact; "
                                 "--approximate-ratios to run anyway")
            if not same_model(manifest.get("model"), model_path):
                raise UsageError(f"{learner}: {path} was sampled by {manifest.get('model')}, not by the initial model "
                                 f"{model_path}; --approximate-ratios to run anyway")
        temperatures.add(float(sampling["temperature"]))
    if len(temperatures) > 1:
        raise UsageError(f"{learner}: the datasets were sampled at different temperatures "
                         f"({', '.join(map(str, sorted(temperatures)))}); train on one at a time")
    temperature = temperatures.pop()
    if temperature <= 0:
        raise UsageError(f"{learner}: greedy samples (temperature 0) have no behaviour probabilities to divide by")
    return temperature


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


def token_logprobs(model, batch: dict[str, torch.Tensor], chunk_size: int = 0, float32: bool = False) -> torch.Tensor:
    """log pi(target_t | prefix) for every response position, in float32: [B, T] (0 elsewhere)."""
    return token_logprobs_at(model, batch, chunk_size, (1.0,), float32)[0]


def token_logprobs_at(model, batch: dict[str, torch.Tensor], chunk_size: int = 0,
                      temperatures: tuple[float, ...] = (1.0,), float32: bool = False) -> torch.Tensor:
    """log softmax(logits / T)[target] at each temperature T, for every response position: [K, B, T].

    With ``chunk_size`` > 0 the vocabulary projection runs over chunks of that many response
    tokens under activation checkpointing, so no [B, T, V] logits (nor their fp32 copy or softmax)
    ever exist: peak extra memory is one [chunk, V] block. 0 projects everything at once.
    ``float32`` runs the projection itself (the lm_head matmul) in float32 even under bf16 autocast:
    a ratio against float32 behaviour log-probs must not carry bf16's ~0.06 nats of error.
    """
    if chunk_size <= 0 and not float32:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()  # [B, T, V]
        return torch.stack([-torch.nn.functional.cross_entropy(
            (logits / t if t != 1.0 else logits).flatten(0, 1), batch["targets"].flatten(), reduction="none"
        ).view_as(batch["targets"]) for t in temperatures])
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True,
                logits_to_keep=1)  # through the (possibly DDP-wrapped) model; logits of one position only
    hidden = out.hidden_states[-1]  # [B, T, H], after the final norm
    lm_head = _unwrap(model).get_output_embeddings()
    where = batch["response_mask"].bool()  # [B, T]
    selected_hidden, selected_targets = hidden[where], batch["targets"][where]  # [N, H], [N]
    step = chunk_size if chunk_size > 0 else max(1, selected_hidden.shape[0])
    pieces = [
        torch.utils.checkpoint.checkpoint(_chunk_logprobs, lm_head, selected_hidden[i : i + step],
                                          selected_targets[i : i + step], temperatures, float32, use_reentrant=False)
        if chunk_size > 0 else _chunk_logprobs(lm_head, selected_hidden, selected_targets, temperatures, float32)
        for i in range(0, selected_hidden.shape[0], step)
    ]
    logprobs = torch.zeros((len(temperatures), *where.shape), dtype=torch.float32, device=hidden.device)  # [K, B, T]
    if pieces:
        logprobs[:, where] = torch.cat(pieces, dim=1)
    return logprobs


def fused_token_logprobs(model, batch: dict[str, torch.Tensor], chunk_size: int, token_grad) -> tuple[torch.Tensor, torch.Tensor]:
    """For a loss that is a per-token weighted sum (``token_grad(log p) = d loss / d log p``): the log-probs of every
    response position, detached, [1, B, T], and a surrogate scalar whose gradient is the loss's, through the fused
    projection (offline_rl/fused.py: each chunk projected once, its gradients made in forward)."""
    from offline_rl.fused import fused_weighted_logprobs

    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True,
                logits_to_keep=1)
    hidden = out.hidden_states[-1]  # [B, T, H], after the final norm
    where = batch["response_mask"].bool()  # [B, T]
    lm_head = _unwrap(model).get_output_embeddings()
    surrogate, selected = fused_weighted_logprobs(hidden[where], lm_head.weight, batch["targets"][where], chunk_size,
                                                  token_grad)
    logprobs = torch.zeros((1, *where.shape), dtype=torch.float32, device=hidden.device)  # [1, B, T]
    logprobs[:, where] = selected
    return logprobs, surrogate


def _chunk_logprobs(lm_head, hidden: torch.Tensor, targets: torch.Tensor, temperatures: tuple[float, ...],
                    float32: bool) -> torch.Tensor:
    if float32:
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            bias = None if lm_head.bias is None else lm_head.bias.float()
            logits = torch.nn.functional.linear(hidden.float(), lm_head.weight.float(), bias)  # [n, V]
    else:
        logits = lm_head(hidden).float()  # [n, V]: one chunk, recomputed in backward
    rows = []
    for t in temperatures:
        scaled = logits / t if t != 1.0 else logits
        rows.append(scaled.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - scaled.logsumexp(-1))  # [n]
    return torch.stack(rows)  # [K, n]


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
