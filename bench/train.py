r"""DFT training throughput: our loop (offline_rl.train, learner dft) vs TRL's SFTTrainer(loss_type="dft").

Same model, same accepted samples in the same order (world train problems, their reference solutions as
responses), same batch size, steps, learning rate and 5% warm-up + cosine (TRL's warm-up starts at 0, ours one
step later); fp32 on CPU, bf16 autocast over fp32 weights on GPU, for both; step 1 gives both the same loss. No
gradient checkpointing on either side (TRL turns it on by default). TRL keeps its own default optimizer (fused
AdamW on torch >= 2.8) and its per-step metrics (entropy, token accuracy). Both load the model with its default
attention (sdpa; flash attention only where it is installed and asked for).

The default pits padding-free against padding-free: ours with --packing (``ours+packing``: each step's sequences
packed into rows of the width that costs least, a block-diagonal mask under sdpa; one row under flash attention)
against TRL's ``padding_free=True`` (``trl+padding-free``: its collator flattens the whole batch into one row,
whose block-diagonal mask under sdpa spans every token of the step: made for flash attention's varlen kernel,
which CPUs lack). ``ours`` and ``trl`` alone pad each batch to its longest sequence.

Tokens/s counts trained (completion) tokens over the wall time of steps after --warmup, read from a global
optimizer-step hook, identically for both sides. Each side runs in a fresh process; peak memory is the peak
RSS of that process (CPU; both import the same modules first) or torch.cuda.max_memory_allocated (GPU).

    .venv/bin/python bench/train.py [--steps 30] [--warmup 5] [--batch-size 32] [--repeats 2] \
        [--shape base|qwen0.5b | --model DIR]
    .venv/bin/python bench/train.py --sides ours+packing,ours,trl+padding-free,trl   # each against the last
    .venv/bin/python bench/train.py --sides ours:none,ours:tensorboard     # what a tracker costs our loop
    .venv/bin/python bench/train.py --sides ours@1024,ours --steps 100 --batch-size 16   # --micro-batch-tokens 1024
    .venv/bin/python bench/train.py --shape qwen0.5b --steps 6 --warmup 2 --batch-size 4 --repeats 1 --fit

Our sides take fit settings after a slash, joined by +: ``ours/lora`` (--lora-rank 16 on every linear layer),
``ours/gc`` (--gradient-checkpointing), ``ours/bf16``, ``ours/fp16``, ``ours/fp32`` (--precision), e.g.
``--sides ours+packing/lora+gc,ours+packing``. ``--fit`` then runs the first of our sides again with LoRA and with
activation checkpointing and prints each one's peak memory and step time against it, and checks the same loss at
step 1 (LoRA starts as the model itself, B = 0; checkpointing recomputes the same activations); any two of our
sides are checked for the same first loss too (2e-2 relative where one lowers the precision, 1e-4 otherwise).
"""

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {  # random-init Qwen2 configurations; "base" is the embedded checkpoint itself
    "qwen0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                     intermediate_size=4864, vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6,
                     rms_norm_eps=1e-6, tie_word_embeddings=True),
    "qwen1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                     intermediate_size=8960, vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6,
                     rms_norm_eps=1e-6, tie_word_embeddings=True),
}


def prepare(work: Path, shape: str, model: str | None, problems: int) -> tuple[str, list[dict]]:
    """The model directory and an offline dataset of world problems with reference solutions as accepted responses."""
    from transformers import AutoTokenizer

    from offline_rl.embedded import world
    from offline_rl.embedded.base_model import DEFAULT_BASE_MODEL
    from rollout.dataset import DatasetWriter
    from rollout.templates import Template

    model_path = model or str(DEFAULT_BASE_MODEL)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if model is None and shape != "base":
        import torch
        from transformers import Qwen2Config, Qwen2ForCausalLM

        torch.manual_seed(0)
        eos = tokenizer.eos_token_id  # the embedded tokenizer's ids all lie inside the larger vocabulary
        config = Qwen2Config(**SHAPES[shape], eos_token_id=eos, bos_token_id=eos, pad_token_id=eos)
        model_path = str(work / "model")
        Qwen2ForCausalLM(config).save_pretrained(model_path)
        tokenizer.save_pretrained(model_path)

    template = Template("world", tokenizer)
    rows = []
    for p in world.load_split("train")[:problems]:
        response = tokenizer(" " + p.solution)["input_ids"] + [tokenizer.eos_token_id]
        rows.append({"prompt_id": p.id, "question": p.question, "gold": p.gold, "prompt": p.prompt,
                     "prompt_token_ids": template.token_ids(p.prompt), "response_token_ids": response,
                     "response": " " + p.solution, "behavior_logprobs": [0.0] * len(response), "sample_idx": 0,
                     "finish_reason": "stop", "pred": p.gold, "reward": 1.0})
    writer = DatasetWriter(work / "data", {"model": model_path, "source": {"kind": "world", "split": "train"}})
    writer.write_shard(rows)
    writer.finish()
    return model_path, rows


def batch_plan(n_examples: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """Example indices of each step, in the order offline_rl.train draws them (one process, no accumulation)."""
    rng, plan = random.Random(seed), []
    while len(plan) < steps:
        order = rng.sample(range(n_examples), n_examples)
        plan += [order[b : b + batch_size] for b in range(0, n_examples - batch_size + 1, batch_size)]
    return plan[:steps]


class StepClock:
    """Wall time at the end of every optimizer step, whoever's loop calls it."""

    def __init__(self):
        import torch
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.times: list[float] = []
        self.on_gpu = torch.cuda.is_available()
        register_optimizer_step_post_hook(self.tick)

    def tick(self, *_):
        import torch

        if self.on_gpu:
            torch.cuda.synchronize()  # the step's kernels done, not merely queued
        self.times.append(time.perf_counter())


FIT = {"lora": {"lora_rank": 16}, "gc": {"gradient_checkpointing": True}, "fp32": {"precision": "fp32"},
       "bf16": {"precision": "bf16"}, "fp16": {"precision": "fp16"}}  # ours.../NAME+NAME: TrainConfig settings


def side_settings(side: str) -> dict | None:
    """What a --sides entry runs: ours[+packing][@MICRO_BATCH_TOKENS][:TRACKERS][/FIT+FIT] or trl[+padding-free];
    None if it is neither."""
    side, _, fit = side.partition("/")
    names = [n for n in fit.split("+") if n]
    if any(n not in FIT for n in names) or (names and not side.startswith("ours")):
        return None
    settings = ours_or_trl(side)
    return settings if settings is None else {**settings, **{k: v for n in names for k, v in FIT[n].items()}}


def ours_or_trl(side: str) -> dict | None:
    name, _, trackers = side.partition(":")
    name, _, tokens = name.partition("@")
    base, _, option = name.partition("+")
    if base == "ours" and option in ("", "packing") and (not tokens or tokens.isdigit()):
        return {"packing": option == "packing", "micro_batch_tokens": int(tokens or 0),
                "report_to": trackers or "tensorboard"}
    if base == "trl" and option in ("", "padding-free") and not tokens and not trackers:
        return {"padding_free": option == "padding-free"}
    return None


def run_ours(work: Path, model_path: str, args, settings: dict) -> list[float]:
    from offline_rl.train import TrainConfig, run_train

    cfg = TrainConfig(learner="dft", data=str(work / "data"), out=str(work / "ours"), steps=args.steps,
                      model=model_path, batch_size=args.batch_size, lr=args.lr, logit_chunk_size=args.logit_chunk_size,
                      seed=0, force=True, log_every=1, **settings)
    clock = StepClock()
    run_train(cfg)
    # run_train() logs its own per-step token counts: they must be the plan's
    plan_tokens = json.loads((work / "plan.json").read_text())["tokens"]
    for record in map(json.loads, (work / "ours" / "metrics.jsonl").read_text().splitlines()):
        assert record["tokens"] == plan_tokens[record["step"] - 1], (record, plan_tokens[record["step"] - 1])
    return clock.times


def run_trl(work: Path, model_path: str, args, settings: dict) -> list[float]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from rollout.dataset import read_rows

    rows = read_rows(work / "data")
    plan = json.loads((work / "plan.json").read_text())
    ordered = [rows[i] for step in plan["indices"] for i in step]  # read in sequence: the same batches as ours
    dataset = Dataset.from_dict({
        "input_ids": [r["prompt_token_ids"] + r["response_token_ids"] for r in ordered],
        "labels": [[-100] * len(r["prompt_token_ids"]) + r["response_token_ids"] for r in ordered],  # completion only
    })
    on_gpu = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model.config.use_cache = False
    config = SFTConfig(
        output_dir=str(work / "trl"), loss_type="dft", max_steps=args.steps,
        per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
        train_sampling_strategy="sequential",
        learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=0.05, weight_decay=0.0, adam_beta2=0.95,
        max_grad_norm=1.0, bf16=on_gpu, use_cpu=not on_gpu, gradient_checkpointing=False, packing=False,
        padding_free=settings["padding_free"], max_length=None, report_to="none", save_strategy="no", logging_steps=10,
        seed=0,
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset,
                         processing_class=AutoTokenizer.from_pretrained(model_path))
    collate, trained = trainer.data_collator, []

    def counting_collate(examples):
        batch = collate(examples)
        trained.append(int((batch["labels"][:, 1:] != -100).sum()))  # the positions TRL's shifted loss covers
        return batch

    trainer.data_collator = counting_collate
    clock = StepClock()
    trainer.train()
    assert trained[: args.steps] == plan["tokens"], "TRL trained other tokens than the plan"
    return clock.times


def run_one(side: str, work: Path, model_path: str, args) -> dict:
    import torch
    import trl  # noqa: F401  both sides import the same modules before the memory baseline

    import offline_rl.train  # noqa: F401

    on_gpu = torch.cuda.is_available()
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    times = (run_ours if side.startswith("ours") else run_trl)(work, model_path, args, side_settings(side))
    assert len(times) == args.steps, f"{side}: {len(times)} optimizer steps, expected {args.steps}"
    tokens = json.loads((work / "plan.json").read_text())["tokens"]
    timed = sum(tokens[args.warmup :])
    seconds = times[-1] - times[args.warmup - 1]
    peak = (torch.cuda.max_memory_allocated() / 2**20 if on_gpu
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    first_loss = None
    if side.startswith("ours"):  # step 1's loss: the same-loss check between our sides
        first_loss = json.loads((work / "ours" / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    return {"side": side, "device": "cuda" if on_gpu else "cpu", "tokens_per_s": timed / seconds, "seconds": seconds,
            "step_ms": 1000 * seconds / (args.steps - args.warmup), "peak_mib": peak,
            "peak_above_imports_mib": None if on_gpu else peak - base_rss / 1024, "first_loss": first_loss}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per side")
    parser.add_argument("--warmup", type=int, default=5, help="first steps left out of the timing")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per step, both sides")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--logit-chunk-size", type=int, default=256, help="ours: response tokens per projection chunk")
    parser.add_argument("--shape", choices=["base", *SHAPES], default="base",
                        help="base: the embedded 3.25M-parameter model; "
                             "qwen0.5b, qwen1.5b: a random-init Qwen2.5 shape")
    parser.add_argument("--repeats", type=int, default=2, help="runs per side, alternated; the fastest of each counts")
    parser.add_argument("--problems", type=int, default=3000, help="world train problems in the dataset")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--model", help="a checkpoint directory to train instead of --shape (its own tokenizer)")
    parser.add_argument("--sides", default="ours+packing,trl+padding-free",
                        help="what runs, each compared to the last: ours[+packing][@MICRO_BATCH_TOKENS][:TRACKERS] "
                        "(our loop with --packing, --micro-batch-tokens, --report-to TRACKERS; plain ours logs to "
                        "tensorboard, the default) or trl[+padding-free]; ours.../FIT+FIT adds lora, gc, bf16, fp16 "
                        "or fp32")
    parser.add_argument("--fit", action="store_true", help="then the first of our sides with LoRA and with activation "
                        "checkpointing: peak memory, step time and the same loss at step 1 against it")
    args = parser.parse_args()
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if len(sides) < 2 or any(side_settings(s) is None for s in sides):
        parser.error("--sides: two or more of ours[+packing][@MICRO_BATCH_TOKENS][:TRACKERS][/FIT], "
                     "trl[+padding-free]")
    if not 1 <= args.warmup < args.steps:
        parser.error("need 1 <= --warmup < --steps")
    if args.problems < args.batch_size:
        parser.error("need --problems >= --batch-size")
    if args.one:
        print(json.dumps(run_one(args.one, Path(args.work), args.model, args)))
        return

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = Path(tmp)
        model_path, rows = prepare(work, args.shape, args.model, args.problems)
        plan = batch_plan(len(rows), args.batch_size, args.steps, seed=0)
        tokens = [sum(len(rows[i]["response_token_ids"]) for i in step) for step in plan]
        lengths = [[len(rows[i]["prompt_token_ids"]) + len(rows[i]["response_token_ids"]) for i in step]
                   for step in plan]
        padded, real = [len(step) * max(step) for step in lengths], [sum(step) for step in lengths]
        (work / "plan.json").write_text(json.dumps({"indices": plan, "tokens": tokens}))
        load = os.getloadavg()[0]
        print(f"{args.model or args.shape} model, {args.steps} steps ({args.warmup} warm-up, untimed) "
              f"x batch {args.batch_size}: "
              f"{sum(tokens) / len(tokens):.0f} trained tokens/step of {sum(real) / len(real):.0f} "
              f"({sum(padded) / len(padded):.0f} padded); "
              f"load average {load:.1f} on {os.cpu_count()} cores", flush=True)
        results: dict[str, dict] = {}
        first_ours = next((s for s in sides if s.startswith("ours")), "ours")
        fit = [f"{first_ours}{'+' if '/' in first_ours else '/'}{name}" for name in ("lora", "gc")] if args.fit else []
        for repeat in range(args.repeats):
            for side in sides + fit * (repeat == 0):  # alternated, so load from other processes hits both sides alike
                command = [sys.executable, __file__, "--one", side, "--work", str(work), "--model", model_path,
                           "--steps", str(args.steps), "--warmup", str(args.warmup), "--batch-size",
                           str(args.batch_size), "--lr", str(args.lr), "--logit-chunk-size", str(args.logit_chunk_size)]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode != 0:
                    sys.exit(f"{side} failed:\n{done.stderr[-4000:]}")
                r = json.loads(done.stdout.strip().splitlines()[-1])
                memory = (f"peak CUDA memory {r['peak_mib']:7.0f} MiB" if r["device"] == "cuda" else
                          f"peak RSS {r['peak_mib']:6.0f} MiB ({r['peak_above_imports_mib']:.0f} MiB above imports)")
                print(f"{side:>16} ({r['device']}, run {repeat + 1}): {r['tokens_per_s']:9,.0f} tok/s, "
                      f"{r['step_ms']:7.1f} ms/step | {memory}", flush=True)
                if side not in results or r["tokens_per_s"] > results[side]["tokens_per_s"]:
                    results[side] = r
    b, last = sides[-1], results[sides[-1]]
    for a in sides[:-1]:
        ours = results[a]
        print(f"{a} {ours['tokens_per_s']:,.0f} tok/s  {b} {last['tokens_per_s']:,.0f} tok/s (best of {args.repeats})  "
              f"ratio {ours['tokens_per_s'] / last['tokens_per_s']:.2f}x | "
              f"peak memory {a} {ours['peak_mib']:,.0f} MiB  "
              f"{b} {last['peak_mib']:,.0f} MiB  ratio {ours['peak_mib'] / last['peak_mib']:.2f}x")
        if ours["first_loss"] is not None and last["first_loss"] is not None:
            same_loss(ours, last)
    for side in fit:
        fit_line(results[first_ours], results[side])
        same_loss(results[first_ours], results[side])


def memory(r: dict) -> float:
    """A side's peak memory: CUDA's peak allocation, or the peak RSS above the imports every side shares."""
    return r["peak_mib"] if r["device"] == "cuda" else r["peak_above_imports_mib"]


def fit_line(plain: dict, fitted: dict) -> None:
    print(f"{fitted['side']} against {plain['side']}: peak memory {memory(fitted):,.0f} vs {memory(plain):,.0f} MiB "
          f"({memory(fitted) / memory(plain):.2f}x), {fitted['step_ms']:,.0f} vs {plain['step_ms']:,.0f} ms/step "
          f"({fitted['step_ms'] / plain['step_ms']:.2f}x)", flush=True)


def same_loss(one: dict, two: dict) -> None:
    """Step 1's losses of two of our sides: equal to float rounding (2e-2 relative where either lowers the precision
    or runs on a GPU, bf16 by default; 1e-4 otherwise), or the benchmark fails."""
    lowered = any(p in r["side"] for r in (one, two) for p in ("bf16", "fp16")) or one["device"] == "cuda"
    tolerance = 2e-2 if lowered else 1e-4
    gap = abs(one["first_loss"] - two["first_loss"]) / max(abs(one["first_loss"]), 1e-12)
    print(f"same loss at step 1, {one['side']} vs {two['side']}: {one['first_loss']:.6g} vs {two['first_loss']:.6g} "
          f"(relative {gap:.1e}, tolerance {tolerance:g})", flush=True)
    if gap > tolerance:
        sys.exit(f"{two['side']}'s first loss differs from {one['side']}'s by {gap:.1e} (more than {tolerance:g})")


if __name__ == "__main__":
    main()
