"""Recipe for the embedded base model: a tiny Qwen2 with its own tokenizer.

``bin/make-base`` runs :func:`make_base`: train a byte-level BPE tokenizer on the
world's text (digits split one per token, so arithmetic is learnable), then
pretrain a ~3M-parameter Qwen2 on the world's ``pretrain`` split, whose
solutions carry occasional careless slips. The result is only partly reliable at
temperature 1, which leaves learners room to improve it on verified samples.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from offline_rl.embedded import DEFAULT_BASE_MODEL, world  # noqa: F401 (the shipped model's path, also read from here)
from rollout.runtime import CommandContext

EOS = "<|endoftext|>"


@dataclass
class MakeBaseConfig:
    out: str = field(default=None, metadata={
        "help": "where to write the checkpoint (default: a new runs/base-model-<time>; the shipped one is "
                "offline_rl/embedded/assets/base-model, which needs --force)"})
    seed: int = field(default=0, metadata={"help": "seed for tokenizer order, init and data order"})
    steps: int = field(default=1000, metadata={"help": "optimizer steps of pretraining", "min": 1})
    batch_size: int = field(default=32, metadata={"help": "sequences per step", "min": 1})
    lr: float = field(default=3e-3, metadata={"help": "peak learning rate (warm-up then cosine)", "above": 0})
    vocab_size: int = field(default=384, metadata={"help": "BPE vocabulary size", "min": 260})
    hidden_size: int = field(default=256, metadata={"help": "model width (a multiple of 128)", "min": 128})
    num_layers: int = field(default=4, metadata={"help": "transformer layers", "min": 1})
    force: bool = field(default=False, metadata={"help": "overwrite an existing directory (e.g. the shipped model)"})


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE whose digits are always single tokens; returns a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token=EOS, bos_token=None, model_max_length=512
    )


def build_model(tokenizer, hidden_size: int, num_layers: int, seed: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=3 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=hidden_size // 64,  # head_dim 64: a size every vLLM attention backend supports
        num_key_value_heads=max(1, hidden_size // 128),
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
        torch_dtype="float32",
    )
    return Qwen2ForCausalLM(config)


def make_base(cfg: MakeBaseConfig) -> dict:
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    problems = world.load_split("pretrain")
    tokenizer = train_tokenizer([p.prompt + " " + p.solution for p in problems[:5000]], cfg.vocab_size)
    model = build_model(tokenizer, cfg.hidden_size, cfg.num_layers, cfg.seed)
    n_params = sum(p.numel() for p in model.parameters())
    # (prompt, solution) token ids; the loss covers the solution only, where the arithmetic is
    prompts = tokenizer([p.prompt for p in problems])["input_ids"]
    solutions = tokenizer([" " + p.solution for p in problems])["input_ids"]
    encoded = [(q, a + [tokenizer.eos_token_id]) for q, a in zip(prompts, solutions, strict=True)]

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, cfg.steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, cfg.steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    order: list[int] = []
    model.train()
    start = time.time()
    bar = tqdm(range(cfg.steps), desc="pretrain", unit="step")
    for _step in bar:
        if len(order) < cfg.batch_size:
            order += rng.sample(range(len(encoded)), len(encoded))
        batch = [encoded[order.pop()] for _ in range(cfg.batch_size)]
        width = max(len(q) + len(a) for q, a in batch)
        input_ids = torch.full((len(batch), width), tokenizer.eos_token_id)  # [B, T]
        labels = torch.full((len(batch), width), -100)  # [B, T]
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)  # [B, T]
        for i, (q, a) in enumerate(batch):
            input_ids[i, : len(q) + len(a)] = torch.tensor(q + a)
            labels[i, len(q) : len(q) + len(a)] = torch.tensor(a)
            attention_mask[i, : len(q) + len(a)] = 1
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}")

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    summary = {"parameters": n_params, "steps": cfg.steps, "final_loss": loss.item(), "seconds": time.time() - start}
    (out / "make_base.json").write_text(json.dumps({"config": cfg.__dict__, **summary}, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None, *, context: CommandContext | None = None) -> dict:
    from rollout.runtime import parse_config

    return run_make_base(parse_config(MakeBaseConfig, argv, "make-base", __doc__), context=context)


def run_make_base(cfg: MakeBaseConfig, *, context: CommandContext | None = None) -> dict:
    """``bin/make-base``: the shipped base model's recipe, run again (it needs nothing of the ``context``)."""
    from dataclasses import replace

    from rollout.files import hold_directory
    from rollout.runtime import UsageError, print_config

    if cfg.hidden_size % 128:
        raise UsageError(f"--hidden-size must be a multiple of 128 (got {cfg.hidden_size})")
    if cfg.out is None:
        cfg = replace(cfg, out=str(Path(__file__).resolve().parents[2] / "runs"
                                   / time.strftime("base-model-%Y%m%d-%H%M%S")))
    hold_directory(Path(cfg.out), "make-base", force=cfg.force)  # writable, and never the shipped model by accident
    print_config(cfg, out=cfg.out)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    summary = make_base(cfg)
    print(f"base model: {summary['parameters']:,} parameters, {summary['steps']} steps, "
          f"final loss {summary['final_loss']:.3f}, {summary['seconds']:.0f} s -> {cfg.out}")
    return summary
