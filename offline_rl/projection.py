"""The policy's log-probabilities of the response tokens: the vocabulary projection, chunked or fused.

:func:`token_logprobs_at` projects chunks of response tokens under activation checkpointing (any loss, any
temperature); :func:`fused_token_logprobs` serves per-token-weighted losses through ``fused.py`` (each chunk
projected once, its gradients made in forward). No ``[B, T, V]`` logits are held whole on either path.
"""

from __future__ import annotations

import torch

from offline_rl.packing import Packing
from offline_rl.sharding import gathered_weight


def token_logprobs(model, batch: dict[str, torch.Tensor], chunk_size: int = 0, float32: bool = False) -> torch.Tensor:
    """log pi(target_t | prefix) for every response position, in float32: [B, T] (0 elsewhere)."""
    return token_logprobs_at(model, batch, chunk_size, (1.0,), float32)[0]


def response_hidden(model, batch: dict[str, torch.Tensor], packing: Packing | None = None) -> torch.Tensor:
    """The final hidden state (after the last norm) at every response position, [N, H] in ``batch``'s row order
    (``hidden[response_mask]``), from one forward through the (possibly wrapped) model: over the padded rows, or
    over ``packing``'s packed rows (``offline_rl.packing``), read back to the same positions."""
    where = batch["response_mask"].bool()  # [B, T]
    if packing is None:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True,
                    logits_to_keep=1)  # logits of one position only
        return out.hidden_states[-1][where]
    # no attention mask and no cache: the position ids keep the sequences apart
    out = model(input_ids=packing.input_ids, position_ids=packing.position_ids, output_hidden_states=True,
                logits_to_keep=1, use_cache=False)
    return packing.gather(out.hidden_states[-1], where)


def token_logprobs_at(model, batch: dict[str, torch.Tensor], chunk_size: int = 0,
                      temperatures: tuple[float, ...] = (1.0,), float32: bool = False,
                      packing: Packing | None = None) -> torch.Tensor:
    """log softmax(logits / T)[target] at each temperature T, for every response position: [K, B, T].

    With ``chunk_size`` > 0 the vocabulary projection runs over chunks of that many response
    tokens under activation checkpointing, so no [B, T, V] logits (nor their fp32 copy or softmax)
    ever exist: peak extra memory is one [chunk, V] block. 0 projects everything at once.
    ``float32`` runs the projection itself (the lm_head matmul) in float32 even under bf16 autocast:
    a ratio against float32 behaviour log-probs must not carry bf16's ~0.06 nats of error. ``packing``: the model
    runs on packed rows (``offline_rl.packing``), the same log-probs to float rounding.
    """
    if chunk_size <= 0 and not float32 and packing is None:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()  # [B, T, V]
        return torch.stack([-torch.nn.functional.cross_entropy(
            (logits / t if t != 1.0 else logits).flatten(0, 1), batch["targets"].flatten(), reduction="none"
        ).view_as(batch["targets"]) for t in temperatures])
    selected_hidden = response_hidden(model, batch, packing)  # [N, H], through the (possibly DDP-wrapped) model
    lm_head = _unwrap(model).get_output_embeddings()
    head = LogitHead(lm_head, *logit_transform(model))
    where = batch["response_mask"].bool()  # [B, T]
    selected_targets = batch["targets"][where]  # [N]
    step = chunk_size if chunk_size > 0 else max(1, selected_hidden.shape[0])
    pieces = [
        torch.utils.checkpoint.checkpoint(_chunk_logprobs, head, selected_hidden[i : i + step],
                                          selected_targets[i : i + step], temperatures, float32, use_reentrant=False)
        if chunk_size > 0 else _chunk_logprobs(head, selected_hidden, selected_targets, temperatures, float32)
        for i in range(0, selected_hidden.shape[0], step)
    ]
    logprobs = torch.zeros((len(temperatures), *where.shape), dtype=torch.float32,
                           device=selected_hidden.device)  # [K, B, T]
    if pieces:
        logprobs[:, where] = torch.cat(pieces, dim=1)
    return logprobs


def token_logprobs_and_entropy(model, batch: dict[str, torch.Tensor], chunk_size: int, topk: int, float32: bool = False,
                               packing: Packing | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(target_t | prefix) [B, T] and, detached, the entropy of pi's next-token distribution renormalised over
    its ``topk`` likeliest tokens [B, T], at every response position (0 elsewhere), in float32: chunks of
    ``chunk_size`` response tokens projected under activation checkpointing (0: all at once), so no [B, T, V]
    logits are held whole. ``packing``: the model runs on packed rows."""
    hidden = response_hidden(model, batch, packing)  # [N, H]
    where = batch["response_mask"].bool()  # [B, T]
    targets = batch["targets"][where]  # [N]
    head = LogitHead(_unwrap(model).get_output_embeddings(), *logit_transform(model))
    step = chunk_size if chunk_size > 0 else max(1, hidden.shape[0])
    pieces = [torch.utils.checkpoint.checkpoint(_chunk_entropy, head, hidden[i : i + step], targets[i : i + step], topk,
                                                float32, use_reentrant=False)
              for i in range(0, hidden.shape[0], step)]
    both = torch.zeros((2, *where.shape), dtype=torch.float32, device=hidden.device)  # [2, B, T]
    if pieces:
        both[:, where] = torch.cat(pieces, dim=1)
    return both[0], both[1]


def _chunk_entropy(head, hidden, targets, topk: int, float32: bool) -> torch.Tensor:
    """[2, n]: the targets' log-probs, and the entropy of the top-``topk`` renormalised distribution (detached)."""
    logits = head(hidden, float32)  # [n, V]
    logprobs = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)  # [n]
    with torch.no_grad():
        top = logits.topk(min(topk, logits.shape[-1]), dim=-1).values.log_softmax(-1)  # [n, k]
        entropy = -(top.exp() * top).sum(-1)  # [n]
    return torch.stack([logprobs, entropy])


def token_logprobs_and_kl(model, reference, batch: dict[str, torch.Tensor], chunk_size: int = 0,
                          packing: Packing | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """log pi(target_t | prefix) [B, T] and KL(pi_ref(. | prefix) || pi(. | prefix)) over the whole vocabulary [B, T]
    at every response position (0 elsewhere), both in float32. ``reference`` is a frozen model run alongside
    (no gradient; a LoRA policy with its adapter off, ``lora.AdapterOff``); chunks of ``chunk_size`` response tokens
    are projected under activation checkpointing, so no [B, T, V] logits of either model are held whole (0: all at
    once). ``packing``: both run on packed rows."""
    with torch.no_grad():  # first: a LoRA policy's reference is itself with the adapter off, kept off its backward
        ref_hidden = response_hidden(reference, batch, packing)  # [N, H]
    hidden = response_hidden(model, batch, packing)  # [N, H]
    where = batch["response_mask"].bool()  # [B, T]
    targets = batch["targets"][where]  # [N]
    head = LogitHead(_unwrap(model).get_output_embeddings(), *logit_transform(model))
    ref_head = LogitHead(_unwrap(reference).get_output_embeddings(), *logit_transform(reference))
    step = chunk_size if chunk_size > 0 else max(1, hidden.shape[0])
    pieces = [torch.utils.checkpoint.checkpoint(_chunk_kl, head, ref_head, hidden[i : i + step],
                                                ref_hidden[i : i + step], targets[i : i + step], use_reentrant=False)
              for i in range(0, hidden.shape[0], step)]
    both = torch.zeros((2, *where.shape), dtype=torch.float32, device=hidden.device)  # [2, B, T]
    if pieces:
        both[:, where] = torch.cat(pieces, dim=1)
    return both[0], both[1]


def _chunk_kl(head, ref_head, hidden, ref_hidden, targets) -> torch.Tensor:
    """[2, n]: the targets' log-probs under the policy, and KL(reference || policy) at each position."""
    logprobs = head(hidden, float32=True).log_softmax(-1)  # [n, V]
    with torch.no_grad():
        ref_logprobs = ref_head(ref_hidden, float32=True).log_softmax(-1)  # [n, V]
    kl = (ref_logprobs.exp() * (ref_logprobs - logprobs)).sum(-1)  # [n]
    return torch.stack([logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1), kl])


def fused_token_logprobs(model, batch: dict[str, torch.Tensor], chunk_size: int, token_grad,
                         packing: Packing | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For a loss that is a per-token weighted sum (``token_grad(log p) = d loss / d log p``): the log-probs of every
    response position, detached, [1, B, T], and a surrogate scalar whose gradient is the loss's, through the fused
    projection (offline_rl/fused.py: each chunk projected once, its gradients made in forward). ``packing``: the
    model runs on packed rows."""
    from offline_rl.fused import fused_weighted_logprobs

    hidden = response_hidden(model, batch, packing)  # [N, H], after the final norm
    where = batch["response_mask"].bool()  # [B, T]
    lm_head = _unwrap(model).get_output_embeddings()
    surrogate, selected = fused_weighted_logprobs(hidden, gathered_weight(lm_head.weight), batch["targets"][where],
                                                  chunk_size, token_grad)
    logprobs = torch.zeros((1, *where.shape), dtype=torch.float32, device=hidden.device)  # [1, B, T]
    logprobs[:, where] = selected
    return logprobs, surrogate


class LogitHead:
    """The output projection as the model's own forward applies it: ``lm_head``, then a logit multiplier
    (Cohere's ``logit_scale``; Granite's ``1 / logits_scaling``) and Gemma-2's tanh soft-capping, so that the
    chunked log-probs are the model's whatever its family."""

    def __init__(self, lm_head, multiplier: float = 1.0, softcap: float | None = None):
        gathered_weight(lm_head.weight)  # under FSDP2: whole, not a shard
        self.lm_head, self.multiplier, self.softcap = lm_head, multiplier, softcap

    def __call__(self, hidden: torch.Tensor, float32: bool = False) -> torch.Tensor:
        if float32:
            with torch.autocast(device_type=hidden.device.type, enabled=False):
                bias = None if self.lm_head.bias is None else self.lm_head.bias.float()
                logits = torch.nn.functional.linear(hidden.float(), self.lm_head.weight.float(), bias)  # [n, V]
        else:
            logits = self.lm_head(hidden).float()  # [n, V]
        if self.multiplier != 1.0:
            logits = logits * self.multiplier
        if self.softcap is not None:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def logit_transform(model) -> tuple[float, float | None]:
    """(multiplier, soft-cap) of the model's logits after ``lm_head``, read off its configuration: (1, None) for
    the families that apply neither (Qwen2, Llama, ...)."""
    config = _unwrap(model).config
    multiplier = (float(getattr(config, "logit_scale", None) or 1.0) if config.model_type in ("cohere", "cohere2")
                  else 1.0)
    if config.model_type in ("granite", "granitemoe", "granitemoeshared", "granitemoehybrid"):
        multiplier /= float(getattr(config, "logits_scaling", None) or 1.0)
    softcap = getattr(config, "final_logit_softcapping", None) or None
    return multiplier, softcap


def _chunk_logprobs(head: LogitHead, hidden: torch.Tensor, targets: torch.Tensor, temperatures: tuple[float, ...],
                    float32: bool) -> torch.Tensor:
    logits = head(hidden, float32)  # [n, V]
    rows = []
    for t in temperatures:
        scaled = logits / t if t != 1.0 else logits
        rows.append(scaled.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - scaled.logsumexp(-1))  # [n]
    return torch.stack(rows)  # [K, n]


def _unwrap(model):
    return getattr(model, "module", model)  # DDP / FSDP wrappers keep the model in .module
