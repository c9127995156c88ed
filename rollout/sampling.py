"""What every engine shares: a sampling request, a sample, the per-prompt seed and stop-token lookup."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass
class Sample:
    token_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: str  # "stop" or "length"


@dataclass
class SamplingConfig:
    n: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 160
    stop: list[str] | None = None


def stop_token_ids(tokenizer, stop: list[str] | None) -> list[int]:
    """The ids of stop strings that are single special tokens (``<|im_end|>``, ``<|endoftext|>``). vLLM matches
    stop strings in text decoded without special tokens, where these never appear: the Qwen2.5-Math harness
    passes them as stop token ids (151645, 151643 for Qwen tokenizers), and so do we."""
    added = tokenizer.get_added_vocab() if stop else {}
    return sorted({added[s] for s in stop or [] if s in added})


def prompt_seed(run_seed: int, prompt_id: str) -> int:
    """A prompt's own sampling seed: the same responses whatever the batching, sharding or resumption."""
    digest = hashlib.sha256(f"{run_seed}:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF
