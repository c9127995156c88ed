"""Padding-free packing (``bin/train --packing``): the model runs on several sequences per row, attention kept
within each sequence, and the loss sees the batch it always sees.

A micro-batch is collated as ever (``views.collate``: right-padded ``[B, T]`` rows, one response each);
:func:`pack` lays its sequences, without their padding, into packed rows with position ids restarting at 0 where
each sequence begins, and an index from every ``[B, T]`` position to its place in the packed rows. The model runs
on the packed rows (``offline_rl.projection``); the final hidden states of the response positions are read back
through the index in ``[B, T]``'s row order, so the log-probs, the losses and their normalisers (per token, per
response, per pair) are the unpacked batch's to float rounding: nothing of a learner changes. Only the
transformer's forward and backward skip the padding.

What keeps sequences apart is the model's attention implementation, given packed position ids and no attention
mask (transformers >= 5):

- ``varlen``: flash attention reads each sequence's bounds from the position ids (``cu_seqlens``), in a batch of
  one row only: the micro-batch is packed into one row, no padding at all, attention cost per sequence.
- ``block-diagonal``: sdpa, eager and flex attention build a causal mask that is also block-diagonal over the
  sequences (``masking_utils.find_packed_sequence_indices``): the micro-batch is packed first-fit, longest first,
  into rows of one width, chosen by :func:`row_width` to cost least. A row slot costs the linear layers' work
  whether a token or padding fills it, and each token's attention grows with its row's width (the mask is applied,
  not skipped): rows as wide as the longest sequence waste slots, wider rows cost attention. A row's
  unused tail comes after its last sequence, so no real token attends to it.

:func:`layout` finds which one a model has by running it (a packed pair of sequences against each alone) and
refuses a model whose attention does neither, with one line.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from rollout.runtime import UsageError

LAYOUTS = {
    "varlen": "one row per micro-batch, each sequence's bounds read from its position ids (flash attention)",
    "block-diagonal": "rows of the width that costs least, a block-diagonal causal mask (sdpa, eager, flex)",
}


@dataclass(frozen=True)
class Layout:
    """How a model's packed rows are laid out: a key of :data:`LAYOUTS`, and for block-diagonal rows the width at
    which a token's attention costs as much as its linear layers (from the model's sizes)."""

    name: str
    balance: float = 1.0


@dataclass(frozen=True)
class Packing:
    """Where a collated micro-batch's sequences sit in packed rows: the model's inputs, and the way back."""

    input_ids: torch.Tensor  # [R, W] the sequences' tokens, end to end
    position_ids: torch.Tensor  # [R, W] 0 where each sequence begins
    index: torch.Tensor  # [B, T] each real token's position in the flattened [R * W] rows (0 on padding)

    def to(self, device) -> Packing:
        return Packing(self.input_ids.to(device), self.position_ids.to(device), self.index.to(device))

    def gather(self, hidden: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """The packed rows' hidden states [R, W, H] at the ``[B, T]`` positions ``where`` selects: [N, H] in the
        order ``hidden_unpacked[where]`` would give them."""
        return hidden.flatten(0, 1)[self.index[where]]


def pack(batch: dict[str, torch.Tensor], layout: Layout) -> Packing:
    """``batch``'s sequences (its ``attention_mask``'s real tokens) packed as ``layout`` says."""
    if layout.name not in LAYOUTS:
        raise ValueError(f"unknown packing layout {layout.name!r}; known: {', '.join(LAYOUTS)}")
    lengths = batch["attention_mask"].sum(-1).tolist()  # [B]
    width = sum(lengths) if layout.name == "varlen" else row_width(lengths, layout.balance)
    rows = first_fit(lengths, width)
    input_ids = torch.zeros((len(rows), width), dtype=torch.long)  # [R, W]; a tail of token 0 at position 0
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)  # [R, W]
    index = torch.zeros(batch["attention_mask"].shape, dtype=torch.long)  # [B, T]
    for r, members in enumerate(rows):
        begin = 0
        for b in members:
            n = lengths[b]
            input_ids[r, begin : begin + n] = batch["input_ids"][b, :n]
            position_ids[r, begin : begin + n] = torch.arange(n)
            index[b, :n] = r * width + begin + torch.arange(n)
            begin += n
    return Packing(input_ids, position_ids, index)


# row widths tried, in multiples of the longest sequence; at most twice it, since the mask sdpa and eager are given
# holds rows x width^2 elements, so no more than twice a padded batch's
WIDTHS = (1, 1.25, 1.5, 2)


def row_width(lengths: list[int], balance: float) -> int:
    """The width of block-diagonal rows for sequences of ``lengths`` that costs least, of the longest times each
    of :data:`WIDTHS` (at most every token in one row): the rows' slots, padding included, times
    ``1 + width / balance`` (attention's share grows with the width)."""
    longest, total = max(lengths), sum(lengths)
    widths = sorted({min(total, int(longest * factor)) for factor in WIDTHS})
    return min(widths, key=lambda width: len(first_fit(lengths, width)) * width * (1 + width / balance))


def first_fit(lengths: list[int], width: int) -> list[list[int]]:
    """Positions into ``lengths`` laid into rows of at most ``width`` tokens: longest first, each into the first row
    with room (first-fit decreasing); equal lengths keep their order."""
    rows: list[list[int]] = []
    room: list[int] = []
    for b in sorted(range(len(lengths)), key=lambda b: -lengths[b]):
        r = next((r for r, left in enumerate(room) if left >= lengths[b]), len(rows))
        if r == len(rows):
            rows.append([])
            room.append(width)
        rows[r].append(b)
        room[r] -= lengths[b]
    return rows


# A probe: a packed row of two sequences must give the second what it gets alone, far closer than it gets when
# attending to the first (a leak). Scale-free, so that bf16 autocast's rounding passes and any leak fails.
PROBE_FIRST, PROBE_SECOND = [1, 2, 3, 4, 5], [6, 7, 8]
ISOLATED_SHARE = 0.1  # packed-vs-alone gap allowed, as a share of the gap a leak makes


@torch.no_grad()
def layout(model, autocast=None) -> Layout:
    """How ``model`` keeps packed sequences apart, found by running it on a packed pair of sequences (under
    ``autocast``, the training's); one line (UsageError) where its attention does neither."""
    config = getattr(model, "module", model).config
    implementation = getattr(config, "_attn_implementation", None) or "eager"
    found = "varlen" if "flash" in implementation else "block-diagonal"
    device = next(model.parameters()).device
    vocab = config.get_text_config().vocab_size
    first, second = [t % vocab for t in PROBE_FIRST], [t % vocab for t in PROBE_SECOND]

    def hidden(ids: list[int], positions: list[int]) -> torch.Tensor:
        out = model(input_ids=torch.tensor([ids], device=device), position_ids=torch.tensor([positions], device=device),
                    output_hidden_states=True, logits_to_keep=1, use_cache=False)
        return out.hidden_states[-1][0, -len(second) :].float()  # [n, H]: the second sequence's

    name = type(getattr(model, "module", model)).__name__
    try:
        with autocast if autocast is not None else contextlib.nullcontext():
            alone = hidden(second, list(range(len(second))))
            packed = hidden(first + second, [*range(len(first)), *range(len(second))])
            leaked = hidden(first + second, list(range(len(first) + len(second))))
    except Exception as e:  # an attention that cannot run on position ids alone: torch and kernels raise many types
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UsageError(f"--packing: {name} with attention {implementation!r} cannot run packed rows ({reason}); "
                         "train without --packing") from None
    gap, leak = float((packed - alone).abs().max()), float((leaked - alone).abs().max())
    if not gap <= ISOLATED_SHARE * leak:
        raise UsageError(f"--packing: {name}'s attention {implementation!r} does not keep packed sequences apart "
                         "(neither varlen position ids nor a block-diagonal mask); train without --packing")
    return Layout(found, balance(config))


def balance(config) -> float:
    """The row width at which a token's attention (a multiply-add per key for q.k and for p.v, over every head)
    costs as much as its linear layers (q, k, v, o and a gated MLP) in a decoder of ``config``'s sizes; 1 (rows
    as wide as the longest sequence) where the configuration does not give them."""
    text = config.get_text_config()
    try:
        hidden, heads = int(text.hidden_size), int(text.num_attention_heads)
        head_dim = int(getattr(text, "head_dim", None) or hidden // heads)
        kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
        mlp = int(getattr(text, "intermediate_size", None) or 4 * hidden)
    except (AttributeError, TypeError, ValueError, ZeroDivisionError):
        return 1.0
    linear = hidden * head_dim * (2 * heads + 2 * kv_heads) + 3 * hidden * mlp
    return linear / (2 * heads * head_dim)
