"""What a model forgot: its mean negative log-likelihood per token on held-out text of the kind the base model was
trained on, and its policy's mean entropy over the same positions.

``world:pretrain`` is the embedded world's pretraining text held out from every split (the ``pretrain`` split's
recipe, careless slips included, none of its questions in any split), scored as ``bin/make-base`` trained on it:
the solution and its end-of-text token given the question. A file is held-out text of one's own: JSON lines with a
``text`` field, or plain UTF-8 text whose documents are separated by blank lines, each scored on every token after
its first. ``bin/eval --heldout-text`` measures a checkpoint once; ``bin/train --heldout-every N`` logs both
figures every N steps (``heldout_nll``, ``heldout_entropy`` in ``metrics.jsonl`` and the trackers).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from offline_rl.projection import LogitHead, logit_transform
from offline_rl.views import Example, collate
from rollout.files import TextError, read_text
from rollout.runtime import UsageError

WORLD_PRETRAIN = "world:pretrain"
DOCUMENTS = 128  # world:pretrain's documents, about 5,500 scored tokens (a few seconds of the embedded model on CPU)
BATCH = 16


@dataclass(frozen=True)
class HeldoutText:
    spec: str  # as given: world:pretrain or the file
    documents: tuple[tuple[str, str], ...]  # (context, scored text): the context conditions, the text is scored
    end_of_text: bool  # the end-of-text token scored after each text (world:pretrain, as the base was trained)


def load_heldout(spec: str | None) -> HeldoutText | None:
    """``--heldout-text``: None or ``none`` (no measurement), ``world:pretrain``, or a file of text; one line for a
    file that is missing, not UTF-8 text, or holds no text."""
    if spec is None or spec == "none":
        return None
    if spec == WORLD_PRETRAIN:
        from offline_rl.embedded import world

        problems = world.heldout_pretrain(DOCUMENTS)
        return HeldoutText(spec, tuple((p.prompt, " " + p.solution) for p in problems), True)
    path = Path(spec)
    if not path.is_file():
        raise UsageError(f"--heldout-text {spec}: no such file (or world:pretrain, or none)")
    try:
        text = read_text(path)
    except TextError as e:
        raise UsageError(f"--heldout-text {e}") from None
    if "\x00" in text:
        raise UsageError(f"--heldout-text {spec} is not text (it holds NUL bytes)")
    documents = _json_lines(text, spec) if path.suffix == ".jsonl" else [d.strip() for d in text.split("\n\n")]
    documents = [d for d in documents if d.strip()]
    if not documents:
        raise UsageError(f"--heldout-text {spec} holds no text")
    return HeldoutText(spec, tuple(("", d) for d in documents), False)


def check_heldout(spec: str | None) -> None:
    """``--heldout-text`` checked without generating the world's text (a command that measures later)."""
    if spec not in (None, "none", WORLD_PRETRAIN):
        load_heldout(spec)


def _json_lines(text: str, spec: str) -> list[str]:
    documents = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise UsageError(f"--heldout-text {spec} line {number}: not JSON") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise UsageError(f"--heldout-text {spec} line {number}: needs a text field holding a string")
        documents.append(record["text"])
    return documents


def encode(heldout: HeldoutText, tokenizer, max_length: int | None = None) -> list[Example]:
    """Each document as an example whose response is what is scored (a text without context: its first token
    conditions the rest), cut to ``max_length`` tokens in all."""
    examples = []
    for context, text in heldout.documents:
        ids = tokenizer(text, add_special_tokens=not context)["input_ids"]
        ids += [tokenizer.eos_token_id] * heldout.end_of_text
        prompt = tokenizer(context, add_special_tokens=True)["input_ids"] if context else ids[:1]
        response = ids if context else ids[1:]
        if max_length is not None:
            response = response[: max(0, max_length - len(prompt))]
        if prompt and response:
            examples.append(Example("heldout", prompt, response, None, 0.0))
    return examples


@torch.no_grad()
def measure(model, examples: list[Example], pad_token_id: int, device, chunk_size: int = 256) -> dict:
    """Mean NLL per scored token and the mean entropy of the model's next-token distribution at those positions
    (nats), in float32 through chunks of the vocabulary projection (no [B, T, V] logits). Every process of a
    sharded model calls it with the same examples (each forward is collective)."""
    training = model.training
    model.eval()
    unwrapped = getattr(model, "module", model)
    head = LogitHead(unwrapped.get_output_embeddings(), *logit_transform(model))
    nll = entropy = 0.0
    tokens = 0
    examples = sorted(examples, key=lambda e: len(e.prompt_token_ids) + len(e.response_token_ids))  # less padding
    for start in range(0, len(examples), BATCH):
        batch = {k: v.to(device) for k, v in collate(examples[start : start + BATCH], pad_token_id).items()}
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True,
                    logits_to_keep=1)
        where = batch["response_mask"].bool()  # [B, T]
        hidden, targets = out.hidden_states[-1][where], batch["targets"][where]  # [N, H], [N]
        for i in range(0, hidden.shape[0], chunk_size):
            logprobs = head(hidden[i : i + chunk_size], float32=True).log_softmax(-1)  # [n, V]
            nll -= logprobs.gather(-1, targets[i : i + chunk_size].unsqueeze(-1)).sum().item()
            entropy -= (logprobs.exp() * logprobs).sum().item()
        tokens += int(where.sum())
    model.train(training)
    return {"nll": nll / max(1, tokens), "entropy": entropy / max(1, tokens), "tokens": tokens}


def measure_checkpoint(model_path: str, heldout: HeldoutText, max_length: int | None = None) -> dict:
    """``heldout`` measured on a checkpoint (float32, on the accelerator if there is one): its record in an
    evaluation's ``results.json``."""
    from transformers import AutoModelForCausalLM

    from rollout.models import load_tokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = load_tokenizer(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    max_length = max_length or getattr(model.config, "max_position_embeddings", None)
    measured = measure(model, encode(heldout, tokenizer, max_length), pad, device)
    del model
    return {"text": heldout.spec, "documents": len(heldout.documents), **measured}
