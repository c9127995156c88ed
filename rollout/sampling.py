"""What every engine shares: a sampling request, a sample, the engine contract, the per-prompt seed and stop-token
lookup.

A model's ``generation_config.json`` (and a ``vllm serve`` that reads it) carries sampling defaults of its own:
Qwen's instruct models ship ``top_k: 20`` and ``repetition_penalty: 1.05``. An engine samples with exactly the
parameters of its :class:`SamplingConfig` — the ones a command was given, and neutral values for all the others —
whatever such a file says, and reports what it applied (:meth:`Engine.applied`), which the manifest records.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol


@dataclass
class Sample:
    token_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: str  # "stop" or "length"


@dataclass
class SamplingConfig:
    """One sampling request: every parameter an engine applies, at its neutral value unless set. The commands set
    ``n``, ``temperature``, ``top_p``, ``max_tokens`` and ``stop``; the rest stay neutral (no flag sets them)."""

    n: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: the whole vocabulary
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    max_tokens: int = 160
    stop: list[str] | None = None


# The parameters besides temperature and a response's length, at the values that leave the model's distribution as
# it is. A manifest written before they were recorded sampled with these (our engines never set them).
TRUNCATIONS = {"top_p": 1.0, "top_k": 0, "min_p": 0.0}  # keep the likeliest tokens, renormalised
PENALTIES = {"repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0}  # move tokens already seen


def non_neutral(record: dict, parameters: dict) -> dict:
    """The ``parameters`` a recorded sampling set away from their neutral value (a missing one reads as neutral)."""
    return {name: record[name] for name, neutral in parameters.items() if record.get(name) is not None
            and record[name] != neutral and not (name == "top_k" and record[name] == -1)}  # -1: vLLM's old "off"


class Engine(Protocol):
    """The contract of a sampling engine (``rollout.engines.ENGINES`` lists them; ``--backend`` picks one).

    An engine builds itself from the engine flags (:meth:`from_flags`; ``flags``: a command's
    :class:`rollout.engines.EngineFlags`), checks them first (:meth:`check_flags`), and declares, with no default to
    inherit:

    - ``logprobs_mode``: how the log-probs it returns relate to the policy. ``processed_logprobs``: those of the
      distribution sampled from (temperature, truncation, penalties applied), which ratio learners divide by;
      anything else, or None (not known), is refused by them (:func:`offline_rl.policies.ratio_temperature`);
    - ``applied``: the complete set of sampling parameters it samples with for a request, in one form for every
      engine (the manifest's ``sampling``), taken from what it hands its backend;
    - ``serves_own_model``: it samples a model that is not its to choose (a server's): it cannot take new weights;
    - ``start_before_writing``: starting it only asks whether the user's input holds (a server answers and serves
      the model), cheaply: commands start it before they write anything;
    - ``holds_device_memory``, ``can_sleep``: whether it takes an accelerator's memory, and can hand it back.
    """

    serves_own_model: ClassVar[bool]
    start_before_writing: ClassVar[bool]

    @classmethod
    def from_flags(cls, flags, model: str, seed: int) -> Engine: ...

    @classmethod
    def check_flags(cls, flags) -> None:
        """What the engine needs of the flags, known before anything is printed or started (UsageError)."""

    @classmethod
    def logprobs_mode(cls, flags) -> str | None:
        """How its log-probs were computed, for these flags (None: the flags of a dataset that recorded none)."""

    @classmethod
    def applied(cls, sampling: SamplingConfig) -> dict:
        """Every sampling parameter it samples with for ``sampling``: the fields of :class:`SamplingConfig`."""

    @property
    def holds_device_memory(self) -> bool: ...

    @property
    def can_sleep(self) -> bool: ...

    def generate(self, prompt_token_ids: list[list[int]], sampling: SamplingConfig, seeds: list[int] | None = None,
                 use_tqdm: bool = True, logprobs: bool = True,
                 on_result: Callable[[int, list[Sample]], None] | None = None) -> list[list[Sample]]:
        """Every prompt's ``sampling.n`` samples, in order; ``on_result(i, samples)`` as prompt i finishes."""

    def load_weights(self, model: str) -> None:
        """Take a checkpoint's weights in place (same architecture)."""

    def reset_cache(self) -> None:
        """Forget what is cached, so that what follows samples as a fresh engine would."""

    def sleep(self) -> None:
        """Hand the accelerator's memory back (``can_sleep`` engines only); the weights are dropped."""

    def wake_up(self) -> None:
        """Take the memory back after :meth:`sleep`; new weights are loaded next."""

    def close(self) -> None: ...


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
