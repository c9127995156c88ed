"""``bin/train``: one training loop for every learner, on accelerate, in three parts.

:func:`setup` reads the data and the learner's view of it, derives every dependent setting once and saves it,
and builds the model, AdamW (warm-up + cosine) and the run's files; :func:`loop` is the loop proper, read top to
bottom; :func:`finish` saves the Hugging Face checkpoint. Every learner returns a loss sum and the count of what
it averages over, and :func:`token_mean` divides once per optimizer step across micro-batches and ranks.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import IO, Any

import torch
from tqdm.auto import tqdm

from offline_rl import lora, packing, precision, sharding, views
from offline_rl.experiments.plots import draw_heldout
from offline_rl.heldout import encode, load_heldout, measure
from offline_rl.learner import Learner, Policy, units
from offline_rl.learners import LEARNER_CONFIGS, LEARNERS
from offline_rl.policies import check_learner, frozen_model, initial_model, sampling_model
from offline_rl.projection import (
    fused_token_logprobs,
    logit_transform,
    token_logprobs_and_entropy,
    token_logprobs_and_kl,
    token_logprobs_at,
)
from offline_rl.views import Pair, ViewContext, check_view
from rollout.dataset import complete_manifests, load_offline_dataset, write_json
from rollout.files import Finished, atomic_write, hold_directory, is_disk_full
from rollout.model_cards import EVALUATIONS, write_model_card
from rollout.models import load_tokenizer, resolve_model
from rollout.runtime import (
    CommandContext,
    CommandFailed,
    NoExamples,
    UsageError,
    parse_config,
    pause_point,
    print_config,
    save_config,
)


@dataclass
class TrainConfig:
    learner: str = field(default="dft", metadata={"help": f"learner: {', '.join(LEARNERS)}"})
    data: str = field(default=None, metadata={
        "help": "offline dataset directory made by bin/collect or bin/import, or several comma-separated (samples and "
                "demonstrations mix) (required)"})
    view: str = field(default=None, metadata={
        "help": f"what the learner trains on: {', '.join(views.VIEWS)} (default: the learner's own)",
        "choices": list(views.VIEWS)})
    out: str = field(default=None, metadata={
        "help": "output directory: final model here, metrics and config beside it (required)"})
    model: str = field(default=None, metadata={
        "help": "initial checkpoint (default: the model that collected the data)"})
    base_model: str = field(default=None, metadata={
        "help": "the frozen model a learner anchored to its base reads (asft's pi_base; default: --model); bin/iterate "
                "sets it to the run's initial model in every round", "advanced": True})
    steps: int = field(default=None, metadata={"help": "optimizer steps (default: --epochs over the data)", "min": 1})
    epochs: float = field(default=1.0, metadata={"help": "passes over the learner's examples when --steps is unset",
                                                 "above": 0, "max": 1000})
    batch_size: int = field(default=32, metadata={
        "help": "sequences (DPO: pairs) per optimizer step, over all processes", "min": 1})
    whole_batches: bool = field(default=False, metadata={
        "help": "with --steps: each step's batch is the examples / --steps (rounded down to whole micro-batches), so "
                "that the steps go once through all of them (a round of GRPO's recipe); replaces --batch-size",
        "advanced": True})
    micro_batch_size: int = field(default=None, metadata={
        "help": "sequences per forward pass per process; the step accumulates batch-size / (this x processes) of them "
                "(default: the whole step's share)", "min": 1, "advanced": True})
    micro_batch_tokens: int = field(default=0, metadata={
        "help": "regroup each step's sequences by length into micro-batches of at most N tokens per process (padded: "
                "rows x longest; with --packing: the sequences' own), which bounds a forward's memory and, unpacked, "
                "its padding: the same loss and gradient up to float rounding; 0: as drawn", "min": 0,
        "advanced": True})
    packing: bool = field(default=False, metadata={
        "help": "run the model on several sequences per row, no padding, attention kept within each sequence "
                "(varlen flash attention or a block-diagonal mask, as the model's attention allows; refused where "
                "neither): the same losses and gradients up to float rounding, less compute"})
    lr: float = field(default=2e-4, metadata={
        "help": "peak learning rate (the DFT paper used 5e-5 for Qwen2.5-Math-1.5B)", "above": 0,
        "max": 1})  # AdamW moves each weight by about lr a step (1e308: NaN at step 2)
    warmup_ratio: float = field(default=0.05, metadata={
        "help": "share of steps spent warming the learning rate up", "min": 0, "max": 1})
    warmup_steps: int = field(default=None, metadata={
        "help": "steps spent warming the learning rate up (default: --warmup-ratio of the steps)",
        "min": 1, "advanced": True})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay", "min": 0, "max": 1,
                                                       "advanced": True})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm", "above": 0, "advanced": True})
    logit_chunk_size: int = field(default=256, metadata={
        "help": "response tokens per vocabulary-projection chunk (no full [B, T, V] logits); 0 = all at once",
        "min": 0, "advanced": True})
    seed: int = field(default=0, metadata={"help": "seed for data order and any sampling"})
    log_every: int = field(default=10, metadata={"help": "steps between metric records", "min": 1, "advanced": True})
    save_every: int = field(default=0, metadata={
        "help": "steps between checkpoints in OUT/checkpoints/step-N (0: none)", "min": 0})
    resume: bool = field(default=False, metadata={
        "help": "continue exactly from the last checkpoint in OUT/checkpoints (same settings only)"})
    init_from: str = field(default=None, metadata={
        "help": "start from another run's checkpoint (its OUT/checkpoints/step-N): its weights, optimizer moments, "
                "schedule and RNG; steps count on from N (rounds: bin/iterate)", "advanced": True})
    schedule_steps: int = field(default=None, metadata={
        "help": "length of the warm-up + cosine schedule (default: up to this run's last step, counted from the first "
                "run's start with --init-from)", "min": 1, "advanced": True})
    restart_schedule: bool = field(default=False, metadata={
        "help": "with --init-from: keep the optimizer's moments but start the schedule over", "advanced": True})
    force: bool = field(default=False, metadata={"help": "write into an OUT that bin/train did not make, replace "
                                                 "another run's finished model, or start over in one holding "
                                                 "checkpoints"})
    include_truncated: bool = field(default=False, metadata={
        "help": "keep responses cut at --max-tokens in the loss: the accepted view's, DPO's chosen ones, the groups "
                "view's (whose statistics count them either way)", "advanced": True})
    report_to: str = field(default="tensorboard", metadata={
        "help": "where metrics go besides metrics.jsonl, through accelerate's trackers: comma-separated tensorboard, "
                "wandb, trackio, or none (wandb, trackio: pip install 'offline-rl[track]')", "advanced": True})
    heldout_every: int = field(default=0, metadata={
        "help": "every N steps (and at the first), log the policy's mean NLL per token on --heldout-text and its mean "
                "entropy there (heldout_nll, heldout_entropy: metrics.jsonl, the trackers, OUT/heldout.png); 0: never",
        "min": 0, "advanced": True})
    heldout_text: str = field(default="world:pretrain", metadata={
        "help": "held-out text of --heldout-every: world:pretrain (text of the kind the embedded base model was "
                "trained on), a .jsonl file with a text field, or a text file of blank-line-separated documents",
        "advanced": True})
    approximate_ratios: bool = field(default=False, metadata={
        "help": "let ratio learners (ppo, iwsft, adft, nft, grpo) divide by behaviour log-probs of a truncated (top-p) "
                "distribution or another model", "advanced": True})
    precision: str = field(default=None, metadata={
        "help": "what forward and backward compute in: fp32, bf16 or fp16 (autocast; fp16 with loss scaling); weights "
                "and optimizer state stay float32 (default: accelerate's mixed_precision, else bf16 on a GPU, fp32 on "
                "CPU)", "choices": ["fp32", "bf16", "fp16"], "advanced": True})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "recompute each decoder layer's activations in backward instead of keeping them: far less memory, "
                "about a third more compute, the same losses and gradients", "advanced": True})
    lora_rank: int = field(default=0, metadata={
        "help": "train LoRA adapters of this rank (PEFT) on the frozen model, saved merged; 0: every weight",
        "min": 0})
    lora_alpha: float = field(default=None, metadata={
        "help": "LoRA: the adapters' update is alpha / rank x B A (default: 2 x rank)", "above": 0, "advanced": True})
    lora_dropout: float = field(default=0.0, metadata={
        "help": "LoRA: dropout on the adapters' input", "min": 0, "max": 1, "advanced": True})
    lora_target_modules: str = field(default="all-linear", metadata={
        "help": "LoRA: comma-separated names of the linear layers adapted (all-linear: every one but the output head, "
                "i.e. the attention and MLP projections)", "advanced": True})
    lora_train_embeddings: bool = field(default=False, metadata={
        "help": "LoRA: also train the input embeddings and the output head in full (tied ones stay tied)",
        "advanced": True})


@dataclass(kw_only=True)
class TrainState:
    """What the loop works on, made once by :func:`setup` (by keyword: 23 fields); ``cfg`` has every derived setting
    resolved."""

    cfg: TrainConfig
    learner: Learner
    learner_cfg: Any
    accelerator: Any
    model: Any
    optimizer: Any
    scheduler: Any
    tokenizer: Any
    examples: list
    identity: dict  # what the checkpoints' weights depend on (a resume must match it)
    offset: int  # steps before this run's first (another run's, with --init-from)
    first_step: int  # where this run starts: ``offset``, or a resumed checkpoint's step
    accumulation: int  # micro-batches per optimizer step per process
    projection: Any  # the fused per-token gradient rule, or None: the checkpointed projection
    temperatures: tuple  # the policy is read at these temperatures (1, and a ratio learner's behaviour one)
    ratio_temperature: float | None
    dropped_truncated: int
    metrics_file: IO | None
    tracked: bool  # trackers besides metrics.jsonl
    sharded: bool = False  # FSDP2: the model's parameters, gradients and moments sharded over the ranks
    reference: Any = None  # the frozen initial model, for learners anchored to it (asft)
    packing: packing.Layout | None = None  # --packing: how the model's packed rows are laid out; None: padded
    heldout: list | None = None  # --heldout-every's examples of --heldout-text
    sampler: Any = None  # the frozen model that sampled the data, for a ratio learner's mismatch correction
    snapshots: deque = field(default_factory=deque)  # psft: the snapshot's log-probs of the steps ahead, per step
    loss_scale: Any = None  # fp16's dynamic loss scale (precision.LossScale; scale 1 otherwise)
    precision_gap: dict = field(default_factory=dict)  # the policy's log-prob gap to float32 at the start
    start: float = 0.0
    tokens_seen: int = 0

    def autocast(self):
        return precision.autocast(self.cfg.precision, self.accelerator.device)

    @property
    def last_step(self) -> int:
        return self.offset + self.cfg.steps


def main(argv: list[str] | None = None, *, context: CommandContext | None = None) -> dict:
    given: set[str] = set()
    cfg, *learner_configs = parse_config((TrainConfig, *LEARNER_CONFIGS), argv, "train", __doc__, given=given, shown=1)
    learner_cfg = learner_config(cfg.learner, learner_configs, given)
    return run_train(cfg, learner_cfg, context=context)


def learner_config(name: str, learner_configs: list, given: set[str]):
    """The named learner's config among those parsed; one line if a flag given belongs to another learner."""
    if name not in LEARNERS:
        raise UsageError(f"unknown learner {name!r}; known: {', '.join(LEARNERS)}")
    learner_cfg = next(c for c in learner_configs if isinstance(c, LEARNERS[name].config))
    own = {f.name for f in fields(TrainConfig)} | {f.name for f in fields(learner_cfg)}
    foreign = sorted(given - own)
    if foreign:
        owners = [n for n, learner in LEARNERS.items() if foreign[0] in {f.name for f in fields(learner.config)}]
        raise UsageError(f"--{foreign[0].replace('_', '-')} is a flag of {', '.join(owners) or 'another command'}, "
                         f"not of {name}")
    return learner_cfg


def run_train(cfg: TrainConfig, learner_cfg=None, *, context: CommandContext | None = None) -> dict:
    """``bin/train``: setup, the loop, finish (``learner_cfg``: the learner's own settings, its defaults if None; it
    needs nothing of the ``context``)."""
    state = setup(cfg, learner_cfg)
    loop(state)
    return finish(state)


# ---------------------------------------------------------------- setup

def setup(cfg: TrainConfig, learner_cfg=None) -> TrainState:
    """Everything the loop needs, in order: the data and its view, the derived settings (saved), the model, the
    optimizer and schedule, a resumed or continued state, and the run's files. Bad input fails here, before any
    training, with one line."""
    from accelerate.utils import set_seed

    if cfg.learner not in LEARNERS:
        raise UsageError(f"unknown learner {cfg.learner!r}; known: {', '.join(LEARNERS)}")
    if cfg.data is None or cfg.out is None:
        raise UsageError("--data and --out are required")
    learner = LEARNERS[cfg.learner]
    learner_cfg = learner_cfg or learner.config()
    if learner.check is not None:  # the learner's own inputs (chord's expert dataset), before anything is loaded
        learner.check(learner_cfg)
    lora.check_settings(cfg)
    cfg = replace(cfg, precision=precision.resolve(cfg.precision, torch.cuda.is_available()),
                  lora_alpha=(cfg.lora_alpha or 2.0 * cfg.lora_rank) if cfg.lora_rank else None)
    manifests = complete_manifests(cfg.data)
    dataset = load_offline_dataset(cfg.data)
    model_path = resolve_model(cfg.model or next(iter(manifests.values()))["model"])
    accelerator, board, tracked, fsdp = make_accelerator(cfg)
    set_seed(cfg.seed)
    cfg = replace(cfg, view=cfg.view or learner.views[0])
    check_view(learner, cfg.view, manifests)  # one line naming what is missing, before any loading
    tokenizer = load_tokenizer(model_path)  # one line if the checkpoint's config or tokenizer is damaged
    check_model_settings(cfg, model_path)  # LoRA's target modules, activation checkpointing: before any weight
    adapter_continues(cfg, continued_from(cfg)[0], model_path)  # --init-from under LoRA: one line before any work
    # a ratio learner reads the policy at the behaviour's temperature: exact, or refused
    ratio_temperature = check_learner(learner, manifests, dataset, model_path, cfg.approximate_ratios)
    base_model = anchor(cfg, learner, model_path)
    heldout = load_heldout(cfg.heldout_text) if cfg.heldout_every else None  # one line if it is not text
    # the mismatch correction recomputes the model that sampled the data (one line if there is not one such model)
    sampler_path = sampling_model(manifests, learner.name) if "sampler_logprobs" in learner.asks(learner_cfg) else None
    loaded: dict = {}

    def load_once():  # by a reference pass (DPO's: before its first step it is the initial model), or after the checks
        if not loaded:
            loaded["model"], loaded["gap"] = load_model(cfg, model_path, accelerator.device,
                                                        probe_batch(cfg, dataset, tokenizer))
        return loaded["model"]

    examples, dropped = learner_examples(cfg, learner, learner_cfg, dataset, manifests, model_path, tokenizer,
                                         accelerator, load_once)
    cfg, offset, init_from = resolve(cfg, len(examples), accelerator.num_processes, model_path)
    out = Path(cfg.out)
    if accelerator.is_main_process:  # one writer: a second bin/train into OUT is refused, another run's model too
        hold_directory(out, "train", force=cfg.force, owned=lambda d: (d / "train_config.json").is_file(),
                       finished=None if cfg.resume else finished_training(cfg, learner_cfg))
    identity = run_identity(cfg, learner_cfg, model_path, manifests)
    if fsdp is not None:
        identity["fsdp"] = 2  # a sharded checkpoint resumes only under FSDP2 (any number of processes)
    resume_from = checkpoint_to_resume(cfg, identity)
    model, optimizer, scheduler = build_model(cfg, load_once(), accelerator, fsdp)
    loss_scale = precision.LossScale(cfg.precision == "fp16")
    if loss_scale.enabled:
        accelerator.register_for_checkpointing(loss_scale)
    first_step = restore(cfg, accelerator, model, scheduler, optimizer, resume_from, init_from, offset, model_path)
    projection = fused_projection(learner, learner_cfg, cfg, ratio_temperature)
    if (getattr(accelerator.unwrap_model(model).get_output_embeddings(), "bias", None) is not None
            or logit_transform(model) != (1.0, None)):
        projection = None  # the fused projection has no bias term, no logit scaling and no soft-capping
    # how the model keeps packed sequences apart, found by running it (every rank: FSDP2's forward is collective)
    autocast = precision.autocast(cfg.precision, accelerator.device)
    packed = packing.layout(accelerator.unwrap_model(model), autocast) if cfg.packing else None
    if accelerator.is_main_process:
        layout = f"FSDP2 over {accelerator.num_processes} processes" if fsdp else \
            f"{accelerator.num_processes} process{'es' * (accelerator.num_processes > 1)}"
        print(f"projection: {'fused chunks' if projection is not None else 'checkpointed chunks'} of "
              f"{cfg.logit_chunk_size or 'all'} response tokens; {layout}"
              + (f"; packed rows, {packed.name} attention" if packed else ""), file=sys.stderr)
    metrics_file = start_files(cfg, learner_cfg, accelerator, resume_from, first_step, board, tracked)
    reference = frozen_model_of(cfg, base_model, model_path, model, accelerator.device)
    sampler = frozen_model_of(cfg, sampler_path, model_path, model, accelerator.device)
    for frozen, name in ((reference, f"the base model {base_model}"), (sampler, f"the sampling model {sampler_path}")):
        if packed and isinstance(frozen, torch.nn.Module) and packing.layout(frozen, autocast).name != packed.name:
            raise UsageError(f"--packing: {name} keeps packed sequences apart otherwise than the policy (another "
                             "attention implementation); train without --packing")
    per_process = cfg.micro_batch_size * accelerator.num_processes
    if heldout is not None:
        context = getattr(accelerator.unwrap_model(model).config, "max_position_embeddings", None)
        heldout = encode(heldout, tokenizer, context)
    return TrainState(
        cfg=cfg, learner=learner, learner_cfg=learner_cfg, accelerator=accelerator, model=model, optimizer=optimizer,
        scheduler=scheduler, tokenizer=tokenizer, examples=examples, identity=identity, offset=offset,
        first_step=first_step, accumulation=cfg.batch_size // per_process, projection=projection,
        temperatures=(1.0,) if ratio_temperature in (None, 1.0) else (1.0, ratio_temperature),
        ratio_temperature=ratio_temperature, dropped_truncated=dropped, metrics_file=metrics_file, tracked=tracked,
        sharded=fsdp is not None, reference=reference, packing=packed, heldout=heldout, sampler=sampler,
        snapshots=load_snapshots(resume_from, accelerator), loss_scale=loss_scale, precision_gap=loaded["gap"])


def make_accelerator(cfg: TrainConfig):
    """accelerate's Accelerator with the trackers ``--report-to`` names; the TensorBoard one,
    whether any is on, and the FSDP2 sharding ``accelerate launch`` asked for (None: none, or one process)."""
    from accelerate import Accelerator
    from accelerate.tracking import TensorBoardTracker

    trackers = report_targets(cfg.report_to)
    # TensorBoard as an instance, to keep its events in OUT/tensorboard; the others by name (imported only if named)
    board = TensorBoardTracker("tensorboard", str(cfg.out)) if "tensorboard" in trackers and cfg.out else None
    log_with = [board] * (board is not None) + [t for t in trackers if t != "tensorboard"]
    on_gpu = torch.cuda.is_available()
    fsdp = sharding.requested()
    if fsdp is not None:
        sharding.load_whole_on_every_rank()
    with sharding.accelerate_unsharded() if fsdp else contextlib.nullcontext():  # we shard, not accelerate
        # no mixed precision of accelerate's: the loop autocasts and scales itself (precision.py), on every device
        accelerator = Accelerator(cpu=not on_gpu, mixed_precision="no", log_with=log_with or None,
                                  project_dir=cfg.out)
    if fsdp is not None and accelerator.num_processes == 1:
        print("FSDP on one process: nothing to shard, training unsharded", file=sys.stderr)
        fsdp = None
    return accelerator, board, bool(log_with), fsdp


def anchor(cfg: TrainConfig, learner: Learner, model_path: str) -> str | None:
    """The frozen base model a learner anchored to it reads (the initial checkpoint unless --base-model names
    another, as bin/iterate's later rounds do), or None; one line for --base-model on a learner that reads none."""
    if not learner.base_kl:
        if cfg.base_model is not None:
            raise UsageError(f"--base-model is read by learners anchored to a base model (asft), not by {learner.name}")
        return None
    return resolve_model(cfg.base_model) if cfg.base_model else model_path


def frozen_model_of(cfg: TrainConfig, path: str | None, model_path: str, model, device):
    """A frozen model the loop runs beside the policy (ASFT's base, the sampling model of a mismatch correction; None
    without one): under LoRA, where it is this run's initial model, the training model with its adapter off (no
    second copy); else loaded."""
    if path and lora.used(cfg) and Path(path).resolve() == Path(model_path).resolve():
        return lora.AdapterOff(model)
    return frozen_model(path, device) if path else None


def learner_examples(cfg: TrainConfig, learner: Learner, learner_cfg, dataset, manifests: dict, model_path: str,
                     tokenizer, accelerator, model=None) -> tuple[list, int]:
    """The learner's examples of its view of the data (one line if there are none), and the truncated responses
    the view left out. ``model``: () -> the training model before its first step, which a reference pass scores
    with (None: one loaded apart)."""
    rows, dropped = views.build(cfg.view, dataset, cfg.include_truncated)
    context = ViewContext(tokenizer, manifests, model_path, cfg.include_truncated, accelerator, cfg.logit_chunk_size,
                          cfg.seed, frozen=None if model is None else lambda: initial_model(model()),
                          autocast=lambda: precision.autocast(cfg.precision, accelerator.device))
    examples = learner.examples(rows, learner_cfg, context)
    if dropped and accelerator.is_main_process:
        print(f"left out {dropped} responses cut at the token limit (no EOS) from the loss; "
              "--include-truncated keeps them", file=sys.stderr)
    if not examples:
        manifest = next(iter(manifests.values()))
        counts = manifest.get("counts", {})
        raise NoExamples(
            f"no training examples for {cfg.learner} in {cfg.data}: pass rate {manifest.get('pass_rate', 0):.3f} "
            f"({counts.get('accepted', 0)} accepted of {counts.get('responses', len(dataset))} responses)")
    return examples, dropped


def resolve(cfg: TrainConfig, n_examples: int, processes: int, model_path: str) -> tuple[TrainConfig, int, Path | None]:
    """Every derived setting, once (``bin/train --config OUT/train_config.json`` repeats the run): the micro-batch,
    the steps, the schedule and warm-up; and the step this run counts from, with the checkpoint it continues."""
    if cfg.whole_batches:  # the steps go once through every example (the last < steps x micro-batches left over)
        if not cfg.steps:
            raise UsageError("--whole-batches needs --steps: the batch is the examples / the steps")
        unit = (cfg.micro_batch_size or 1) * processes
        cfg = replace(cfg, batch_size=max(unit, n_examples // cfg.steps // unit * unit))
    micro = micro_batch(cfg.batch_size, cfg.micro_batch_size, processes)
    total_steps = cfg.steps or max(1, math.ceil(cfg.epochs * n_examples / cfg.batch_size))
    init_from, offset = continued_from(cfg)  # steps before this run's first (another run's, with --init-from)
    schedule_steps = cfg.schedule_steps or (total_steps if cfg.restart_schedule else offset + total_steps)
    cfg = replace(cfg, model=model_path, steps=total_steps, micro_batch_size=micro, schedule_steps=schedule_steps,
                  init_from=str(init_from) if init_from else None,
                  warmup_steps=cfg.warmup_steps or max(1, round(cfg.warmup_ratio * schedule_steps)))
    return cfg, offset, init_from


def finished_training(cfg: TrainConfig, learner_cfg) -> Finished:
    """A finished model in OUT is the same run's when its ``train_config.json`` holds this run's settings (all but
    those a resume may change); ``--resume`` is checked against its checkpoint's instead."""
    settings = {k: v for k, v in {**asdict(cfg), **asdict(learner_cfg)}.items() if k not in RESUMABLE_CHANGES}
    return Finished("{learner} model trained on {data}", "train_summary.json", settings,
                    lambda out: json.loads((out / "train_config.json").read_text()))


def micro_batch(batch_size: int, micro_batch_size: int | None, processes: int) -> int:
    """Sequences per forward pass per process: ``micro_batch_size``, or each process's whole share of the step; one
    line if they do not divide the step (bin/compare and bin/iterate ask before any stage)."""
    micro = micro_batch_size or max(1, batch_size // processes)
    if batch_size % (micro * processes):
        raise UsageError(f"--batch-size {batch_size} is not a multiple of --micro-batch-size {micro} x "
                         f"{processes} process{'es' * (processes > 1)}")
    return micro


def checkpoint_to_resume(cfg: TrainConfig, identity: dict) -> Path | None:
    """``--resume``'s checkpoint, checked to come from the same settings; an earlier run's checkpoints are never
    silently trained over."""
    checkpoints = Path(cfg.out) / "checkpoints"
    resume_from = latest_checkpoint(checkpoints) if cfg.resume else None
    if cfg.resume and resume_from is None:
        raise UsageError(f"--resume: no checkpoint in {checkpoints}")
    if resume_from is not None:
        check_resume_identity(resume_from, identity)
    elif latest_checkpoint(checkpoints) is not None and not cfg.force:
        raise UsageError(f"{cfg.out} holds checkpoints of an earlier run; add --resume to continue it, "
                         "or --force to start over")
    return resume_from


def check_fit(cfg: TrainConfig, model_path: str) -> None:
    """What a command that trains later (bin/iterate) checks before any stage: LoRA's settings, the precision against
    accelerate's, and what the model can take (one line each)."""
    lora.check_settings(cfg)
    precision.resolve(cfg.precision, torch.cuda.is_available())
    check_model_settings(cfg, model_path)


def check_model_settings(cfg: TrainConfig, model_path: str) -> None:
    """One line, before any weight is read, for settings the model cannot take: LoRA target modules it does not
    have, activation checkpointing it does not implement."""
    if lora.used(cfg):
        lora.check_model(cfg, model_path)
    if cfg.gradient_checkpointing:
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(model_path)
        model_class = AutoModelForCausalLM._model_mapping.get(type(config), None)
        if model_class is not None and not getattr(model_class, "supports_gradient_checkpointing", False):
            raise UsageError(f"--gradient-checkpointing: {model_class.__name__} does not implement activation "
                             "checkpointing")


def probe_batch(cfg: TrainConfig, dataset, tokenizer) -> dict[str, torch.Tensor] | None:
    """The first 8 responses of the view, as one batch: where the precision's log-prob gap to float32 is measured
    (None in float32)."""
    if cfg.precision == "fp32":
        return None
    rows = views.build(cfg.view, dataset, cfg.include_truncated)[0][:8]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return views.collate(rows, pad) if rows else None


def load_model(cfg: TrainConfig, model_path: str, device, probe=None):
    """The model in float32 on ``device`` (one line if its weights do not load): under LoRA frozen with fresh adapters,
    its frozen weights in the run's lower precision; activation checkpointing on if asked. Returns it and the
    log-prob gap of the run's precision to float32 on ``probe`` ({} in float32; not measured for a LoRA run on an
    accelerator, which never holds its frozen weights in float32 there)."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    except Exception as e:  # a damaged or truncated checkpoint: transformers and safetensors raise many types
        if is_disk_full(e):
            raise
        raise UsageError(f"cannot load model {model_path}: "
                         f"{(str(e).strip().splitlines() or [type(e).__name__])[0]}") from None
    model.config.use_cache = False
    if lora.used(cfg):
        model = lora.attach(model, cfg)
    low = precision.DTYPES[cfg.precision]

    def lower():
        if lora.used(cfg):  # the frozen weights in the lower precision; the trained ones stay float32
            lora.hold_frozen_in(model, low)

    measure = probe is not None and (device.type == "cpu" or not lora.used(cfg))
    if not measure:
        lower()  # before the move: never a float32 copy of the frozen weights on the device
    model.to(device)
    gap = {}
    if measure:
        gap = precision.logprob_gap(model, {k: v.to(device) for k, v in probe.items()}, cfg.precision,
                                    cfg.logit_chunk_size, lower=lower)
    if cfg.gradient_checkpointing:  # each decoder layer's activations recomputed in backward
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, gap


def build_model(cfg: TrainConfig, model, accelerator, fsdp=None):
    """Fused AdamW over the trained parameters (every one, or LoRA's) and the warm-up + cosine schedule; under FSDP2
    the model sharded (:mod:`offline_rl.sharding`) before the optimizer sees its parameters, and neither prepared
    by accelerate (no DDP wrapper; the checkpoints save them as DCP shards)."""
    if fsdp is not None:
        model = sharding.shard(model, fsdp, accelerator.device)
    trained = [p for p in model.parameters() if p.requires_grad]
    # fused: one kernel over all parameters (measured 7.8x faster than the per-tensor loop at 0.5B on CPU)
    optimizer = torch.optim.AdamW(trained, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95), fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.schedule_steps, cfg.warmup_steps))
    if fsdp is None:
        model, optimizer = accelerator.prepare(model, optimizer)
        if lora.used(cfg):  # checkpoints hold the adapters only: the frozen weights are --model's
            lora.keep_trained_in_checkpoints(accelerator, model)
    # registered, not prepared: a prepared scheduler steps once per process, changing the schedule under DDP
    accelerator.register_for_checkpointing(scheduler)
    return model, optimizer, scheduler


def restore(cfg: TrainConfig, accelerator, model, scheduler, optimizer, resume_from: Path | None,
            init_from: Path | None, offset: int, model_path: str) -> int:
    """Load a resumed checkpoint (model, optimizer, scheduler, RNG) or the one ``--init-from`` continues (under
    LoRA: its schedule position only, :func:`adapter_continues`); returns the step the loop starts from."""
    if resume_from is not None:
        load_checkpoint(accelerator, model, optimizer, resume_from)
        return int(resume_from.name.removeprefix("step-"))
    if init_from is None:
        return offset
    if adapter_continues(cfg, init_from, model_path):
        scheduler.last_epoch = offset  # a fresh adapter on the merged model, from the schedule's position
    else:
        if sharding.checkpoint_is_sharded(init_from) and not sharding.is_sharded(model):
            raise UsageError(f"--init-from {init_from} holds FSDP2 shards: continue it under FSDP2 "
                             "(accelerate launch --config_file configs/accelerate/fsdp.yaml ...)")
        if sharding.is_sharded(model) and not sharding.checkpoint_is_sharded(init_from):
            raise UsageError(f"--init-from {init_from} was saved without FSDP: continue it without FSDP")
        try:
            load_checkpoint(accelerator, model, optimizer, init_from)
        except Exception as e:  # another architecture, a damaged state: torch and accelerate raise many types
            if is_disk_full(e):
                raise
            raise UsageError(f"--init-from {init_from}: "
                             f"{(str(e).strip().splitlines() or [type(e).__name__])[0]}") from None
    if cfg.restart_schedule:
        scheduler.last_epoch = 0
    # this run's rate and schedule position, whatever the earlier run's rate was
    schedule = lr_lambda(cfg.schedule_steps, cfg.warmup_steps)
    scheduler.base_lrs = [cfg.lr] * len(optimizer.param_groups)
    for group in optimizer.param_groups:
        group["initial_lr"], group["lr"] = cfg.lr, cfg.lr * schedule(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    return offset


def start_files(cfg: TrainConfig, learner_cfg, accelerator, resume_from: Path | None, first_step: int, board,
                tracked: bool) -> IO | None:
    """The resolved settings printed and saved, an earlier run's leftovers cleared, the metrics log opened (a resumed
    run's cut at its checkpoint) and the trackers started; returns the metrics file (None off the main process)."""
    out = Path(cfg.out)
    resolved = {**asdict(cfg), **asdict(learner_cfg), "resume": False}  # saved, and logged to every tracker
    metrics_file = None
    if accelerator.is_main_process:
        print_config(resolved, out=out)  # once the input is known good: bad input gets one line only
        if resume_from is None:  # a fresh run: nothing of an earlier one may pass for this one's result
            if (out / "checkpoints").exists():
                shutil.rmtree(out / "checkpoints")
            for stale in ("train_summary.json", "config.json", EVALUATIONS):  # EVALUATIONS: of the old weights
                (out / stale).unlink(missing_ok=True)
        write_json(out / "train_config.json", resolved)
        save_config(learner_cfg, out / "learner_config.json")
        keep_metrics_until(out / "metrics.jsonl", first_step)
        metrics_file = (out / "metrics.jsonl").open("a")
    if board is not None and first_step:
        # a resumed run hides the events logged after its checkpoint, as metrics.jsonl drops their records
        board.init_kwargs["purge_step"] = first_step + 1
    if tracked:
        accelerator.init_trackers("offline-rl", config=resolved,
                                  init_kwargs={"wandb": {"name": out.name, "dir": str(out)},
                                               "trackio": {"name": out.name}})
    return metrics_file


# ---------------------------------------------------------------- the loop

def loop(state: TrainState) -> None:
    """The optimizer steps from ``first_step`` to ``last_step``: draw the step's examples, accumulate each
    micro-batch's gradient of its share of the step's token mean, clip, log, check, update, checkpoint."""
    cfg, accelerator, learner, model = state.cfg, state.accelerator, state.learner, state.model
    pad = state.tokenizer.pad_token_id if state.tokenizer.pad_token_id is not None else state.tokenizer.eos_token_id
    model.train()
    state.start = time.time()
    bar = tqdm(range(state.first_step, state.last_step), desc=f"train {cfg.learner}", unit="step",
               initial=state.first_step - state.offset, total=cfg.steps, disable=not accelerator.is_main_process)
    data = step_batches(len(state.examples), cfg, accelerator.process_index, accelerator.num_processes,
                        state.accumulation)
    for _ in range(state.first_step - state.offset):  # the data position: the order is a pure function of the seed
        next(data)
    ahead: deque = deque()  # steps drawn early: the ones a snapshot was taken for
    for step in bar:
        micro = micro_batches(state, ahead.popleft() if ahead else next(data), pad)
        snapshots = None
        if learner.snapshot_every is not None:  # psft: the policy's log-probs of this step and the K - 1 next
            if not state.snapshots:
                ahead.extend(next(data) for _ in range(min(learner.snapshot_every(state.learner_cfg),
                                                           state.last_step - step) - 1))
                take_snapshot(state, [micro, *(micro_batches(state, drawn, pad) for drawn in ahead)])
            snapshots = state.snapshots.popleft()
        step_units = count_units(learner, state.learner_cfg, [batch for batch, _ in micro], accelerator)
        totals: dict[str, float] = {}
        for i, (batch, packed) in enumerate(micro):
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            packed = packed.to(accelerator.device) if packed is not None else None
            sync = accelerator.no_sync(model) if i < len(micro) - 1 else contextlib.nullcontext()
            with sync, state.autocast():
                loss_sum, metrics = backward(state, batch, step_units, packed, step,
                                             snapshots[i] if snapshots else None)
            # the loss as this micro-batch's share of the step's mean (summed over ranks in the record)
            share = token_mean(loss_sum.detach(), step_units, 1)
            for k, v in {"loss": share, **metrics}.items():
                totals[k] = (max(totals.get(k, -math.inf), float(v)) if k.endswith("_max")
                             else totals.get(k, 0.0) + float(v))
        state.loss_scale.unscale(model.parameters())
        grad_norm = (sharding.clip_grad_norm(model, cfg.max_grad_norm) if state.sharded
                     else accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm))
        scale = state.loss_scale.scale
        take_step = state.loss_scale.update(float(grad_norm))  # fp16: an overflow skips the step (all ranks alike)
        record = step_record(state, step, totals, step_units, grad_norm)
        if state.loss_scale.enabled:
            record.update(loss_scale=scale, skipped=int(not take_step))
        if step == state.first_step:  # the precision's log-prob gap to float32, measured before the first step
            record.update(state.precision_gap)
        bar.set_postfix(loss=f"{record['loss']:.4f}", nll=f"{record.get('nll', float('nan')):.3f}",
                        tok_s=f"{record['tokens_per_s']:.0f}")
        measured = cfg.heldout_every and (step - state.offset) % cfg.heldout_every == 0
        if measured:  # the weights this step's loss was computed with, as the loss: every process (collective)
            record.update(heldout_record(state))
        if accelerator.is_main_process and ((step + 1) % cfg.log_every == 0 or step + 1 == state.last_step
                                            or measured or not math.isfinite(record["loss"])
                                            or (step == state.first_step and state.precision_gap)):
            state.metrics_file.write(json.dumps(record) + "\n")
            state.metrics_file.flush()
            if state.tracked:
                accelerator.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=step + 1)
        finite = math.isfinite(record["loss"]) and math.isfinite(record["grad_norm"])
        if not finite and (take_step or state.loss_scale.scale < 1.0):  # fp16 skips an overflow, unless it persists
            # checked before the update: no checkpoint ever holds weights a non-finite step produced
            last = latest_checkpoint(Path(cfg.out) / "checkpoints")
            what = (f"loss became {record['loss']}" if not math.isfinite(record["loss"])
                    else "gradient norm became non-finite")
            raise CommandFailed(f"{what} at step {step + 1}; stopped, last good checkpoint: {last or 'none'}")
        if take_step:
            state.optimizer.step()
        state.scheduler.step()
        state.optimizer.zero_grad(set_to_none=True)
        if cfg.save_every and (step + 1) % cfg.save_every == 0:
            save_checkpoint(accelerator, Path(cfg.out) / "checkpoints", step + 1, state.identity,
                            (model, state.optimizer) if state.sharded else None,
                            state.snapshots if learner.snapshot_every is not None else None)
        pause_point(f"train:step-{step + 1}")


def heldout_record(state: TrainState) -> dict:
    """The policy's mean NLL per token on the held-out text and its mean entropy there, now."""
    pad = state.tokenizer.pad_token_id if state.tokenizer.pad_token_id is not None else state.tokenizer.eos_token_id
    with state.autocast():  # as the loss is computed
        measured = measure(state.model, state.heldout, pad, state.accelerator.device, state.cfg.logit_chunk_size or 256)
    return {"heldout_nll": measured["nll"], "heldout_entropy": measured["entropy"]}


def step_batches(n_examples: int, cfg: TrainConfig, rank: int, ranks: int, accumulation: int):
    """Each step's micro-batches of example positions, for this rank: one seeded permutation per epoch, identical
    on every rank, each rank taking its slice."""
    rng = random.Random(cfg.seed)
    micro = cfg.micro_batch_size
    while True:
        order = rng.sample(range(n_examples), n_examples)
        for begin in range(0, len(order) - cfg.batch_size + 1, cfg.batch_size):
            mine = order[begin : begin + cfg.batch_size][rank::ranks]
            yield [mine[i * micro : (i + 1) * micro] for i in range(accumulation)]
        if len(order) < cfg.batch_size:  # fewer examples than one step: cycle with replacement
            yield [[rng.randrange(n_examples) for _ in range(micro)] for _ in range(accumulation)]


def micro_batches(state: TrainState, drawn: list[list[int]], pad: int) -> list[tuple[dict, packing.Packing | None]]:
    """The step's micro-batches of this rank, collated as the learner's view makes them, each with its packed rows
    under --packing (the loss sees the collated batch, never the packed rows). As drawn, or, with
    --micro-batch-tokens, the same examples regrouped by length, as many micro-batches on every rank (a rank's
    forwards and gradient syncs pair with the others')."""
    cfg, accelerator = state.cfg, state.accelerator
    if cfg.micro_batch_tokens:
        mine = [i for idx in drawn for i in idx]
        sizes = [(1, example_tokens(state.examples[i])) if state.packing else example_size(state.examples[i])
                 for i in mine]
        groups = length_groups(sizes, cfg.micro_batch_tokens, packed=state.packing is not None)
        if accelerator.num_processes > 1:
            counts = accelerator.gather(torch.tensor([len(groups)], device=accelerator.device))
            groups = split_groups(groups, int(counts.max()))
        drawn = [[mine[j] for j in group] for group in groups]
    batches = [state.learner.collate([state.examples[i] for i in idx], pad) for idx in drawn]
    return [(batch, packing.pack(batch, state.packing) if state.packing else None) for batch in batches]


@torch.no_grad()
def take_snapshot(state: TrainState, steps: list[list[tuple[dict, packing.Packing | None]]]) -> None:
    """psft's proximal policy: the policy's log-probs (as its training forward computes them) of every micro-batch
    of the steps ahead, taken now, before any of them updates it (PSFT's verl recipe: old log-probs of a batch,
    then its mini-batch updates)."""
    device, chunk = state.accelerator.device, state.cfg.logit_chunk_size
    for micro in steps:
        taken = []
        for batch, packed in micro:
            batch = {k: v.to(device) for k, v in batch.items()}
            packed = packed.to(device) if packed is not None else None
            with state.autocast():
                taken.append(token_logprobs_at(state.model, batch, chunk, (1.0,), state.learner.float32_projection,
                                               packed)[0])
        state.snapshots.append(taken)


def count_units(learner: Learner, learner_cfg, micro: list[dict[str, torch.Tensor]], accelerator) -> torch.Tensor:
    """What the step's loss sum is divided by: the learner's normaliser counted over the step's micro-batches and
    every rank."""
    normaliser = learner.normaliser(learner_cfg)
    local_units = sum(units(batch, normaliser) for batch in micro)
    return accelerator.reduce(local_units.to(accelerator.device), reduction="sum")


def backward(state: TrainState, batch: dict[str, torch.Tensor], step_units: torch.Tensor,
             packed: packing.Packing | None = None, step: int = 0, snapshot: torch.Tensor | None = None):
    """One micro-batch's loss sum and metrics, its gradient accumulated as its share of the step's mean; ``packed``:
    the model runs on the batch's packed rows, the loss on the batch as collated."""
    cfg, accelerator, learner = state.cfg, state.accelerator, state.learner
    if state.projection is not None:  # gradients made in forward; the loss's value from the detached log-probs
        logprobs, surrogate = fused_token_logprobs(state.model, batch, cfg.logit_chunk_size, state.projection, packed)
        loss_sum, metrics = learner.loss(Policy(logprobs[0]), batch, state.learner_cfg)
        accelerator.backward(token_mean(surrogate, step_units, accelerator.num_processes) * state.loss_scale.scale)
        return loss_sum, metrics
    loss_sum, metrics = learner.loss(policy_inputs(state, batch, packed, step, snapshot), batch, state.learner_cfg)
    # fp16: scaled so that small gradients do not flush to zero (unscaled before clipping)
    accelerator.backward(token_mean(loss_sum, step_units, accelerator.num_processes) * state.loss_scale.scale)
    return loss_sum, metrics


def policy_inputs(state: TrainState, batch: dict[str, torch.Tensor], packed: packing.Packing | None = None,
                  step: int = 0, snapshot: torch.Tensor | None = None) -> Policy:
    """What the learner's record asks of the policy for this micro-batch, by name, through the chunked projection:
    the log-probs at temperature 1, at the behaviour's temperature, with the initial model's KL or the top-k
    entropy; the sampling model's log-probs (frozen beside the policy), psft's snapshot (taken by the loop), the
    step; each [B, T] as the batch was collated, whether the model ran on ``packed`` rows or not."""
    chunk, learner = state.cfg.logit_chunk_size, state.learner
    asks = learner.asks(state.learner_cfg)
    given = {"step": step if "step" in asks else None, "snapshot_logprobs": snapshot}
    if "sampler_logprobs" in asks:  # the mismatch correction: the sampling model as the trainer computes it
        with torch.no_grad():
            given["sampler_logprobs"] = token_logprobs_at(state.sampler, batch, chunk, state.temperatures[-1:],
                                                          True, packed)[0]
    if learner.base_kl:  # anchored to the initial model: its KL over the vocabulary at every token
        logprobs, base_kl = token_logprobs_and_kl(state.model, state.reference, batch, chunk, packed)
        return Policy(logprobs, base_kl=base_kl, **given)
    if "topk_entropy" in asks:  # eaft: the entropy of the top-k distribution, computed in the same chunks
        logprobs, entropy = token_logprobs_and_entropy(state.model, batch, chunk, learner.topk(state.learner_cfg),
                                                       learner.float32_projection, packed)
        return Policy(logprobs, topk_entropy=entropy, **given)
    logprobs = token_logprobs_at(state.model, batch, chunk, state.temperatures, learner.float32_projection,
                                 packed)  # [K, B, T]
    if learner.behavior_ratio:  # the behaviour's temperature last: the same tensor as logprobs[0] at T = 1
        return Policy(logprobs[0], tempered_logprobs=logprobs[-1], **given)
    return Policy(logprobs[0], **given)


def step_record(state: TrainState, step: int, totals: dict[str, float], step_units, grad_norm) -> dict:
    """The step's log record: metric sums over every rank and micro-batch divided by the step's count (the same
    numbers whatever the number of processes or accumulation steps), ``_max`` metrics the largest anywhere."""
    accelerator = state.accelerator
    counts = step_units.reshape(-1).float()  # [1], or [2]: the sampled and the expert tokens ("source-token")
    state.tokens_seen += int(counts.sum())
    record = {"step": step + 1, "lr": state.scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
              "tokens": int(counts.sum()), "tokens_per_s": state.tokens_seen / (time.time() - state.start)}
    if len(counts) == 2:  # per source: expert_* metrics per expert token, the others per sampled token
        record["expert_tokens"] = int(counts[1])

    def count(name: str) -> float:
        return float(counts[1] if name.startswith("expert_") else counts[0]) if len(counts) == 2 else float(counts[0])

    names = sorted(k for k in totals if not k.endswith("_max"))
    summed = accelerator.reduce(torch.tensor([totals[k] for k in names], device=accelerator.device), "sum")
    record.update({k.removesuffix("_sum"): float(v) if k == "loss" else float(v) / max(1.0, count(k))
                   for k, v in zip(names, summed, strict=True)})
    if "mismatch_ratio_sq" in record:  # the ratios' effective sample size as importance weights: mean^2 / mean square
        record["mismatch_ess"] = record["mismatch_ratio"] ** 2 / max(record.pop("mismatch_ratio_sq"), 1e-30)
    maxima = sorted(k for k in totals if k.endswith("_max"))
    if maxima:
        gathered = accelerator.gather(torch.tensor([totals[k] for k in maxima], device=accelerator.device))
        record.update(zip(maxima, gathered.view(-1, len(maxima)).amax(0).tolist(), strict=True))
    return record


# ---------------------------------------------------------------- finish

def finish(state: TrainState) -> dict:
    """The final Hugging Face checkpoint (FSDP shards gathered), the summary that marks the run finished, the card."""
    cfg, accelerator = state.cfg, state.accelerator
    accelerator.wait_for_everyone()
    # collective: gathers FSDP2 shards onto the main process
    state_dict = sharding.full_state_dict(state.model) if state.sharded else accelerator.get_state_dict(state.model)
    seconds = time.time() - state.start
    summary = {"learner": cfg.learner, "steps": cfg.steps, "first_step": state.offset, "last_step": state.last_step,
               "examples": len(state.examples), "dropped_truncated": state.dropped_truncated,
               "ratio_temperature": state.ratio_temperature, "seconds": round(seconds, 2),
               "tokens_per_s": round(state.tokens_seen / seconds, 1)}
    if state.heldout is not None:  # the final weights' (every process: collective)
        summary.update(heldout_record(state))
    if torch.cuda.is_available():  # this process's peak accelerator memory (bench/gpu_check.sh reads it per learner)
        summary["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    out = Path(cfg.out)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(state.model)
        if lora.is_adapted(unwrapped):  # the adapter in OUT/adapter, the merged weights as the checkpoint
            state_dict = lora.save(unwrapped, state_dict, out)
            unwrapped = unwrapped.get_base_model()
        unwrapped.config.use_cache = True
        state.metrics_file.close()
        save_final(unwrapped, state.tokenizer, state_dict, out)
        if state.heldout is not None:  # held-out NLL and entropy over the steps, the final weights' last
            records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
            final = {"step": state.last_step + 1, **{k: summary[k] for k in ("heldout_nll", "heldout_entropy")}}
            draw_heldout({cfg.learner: [[r for r in records if "heldout_nll" in r] + [final]]}, out / "heldout.png")
        write_json(out / "train_summary.json", summary)  # its presence marks a finished training
        write_model_card(out)
        print(f"trained {cfg.learner} for {cfg.steps} steps on {len(state.examples)} examples "
              f"({summary['tokens_per_s']:.0f} tokens/s) -> {out}")
    for tracker in accelerator.trackers:  # not end_training(): it would end the process group of a caller (rounds)
        tracker.finish()
    return summary


# ---------------------------------------------------------------- helpers

def token_mean(loss_sum: torch.Tensor, step_tokens: torch.Tensor, num_processes: int) -> torch.Tensor:
    """The per-token mean over a whole optimizer step, as this micro-batch's share.

    ``step_tokens`` counts the step's tokens over all micro-batches and ranks; DDP
    averages gradients over ranks, so each rank's share is scaled back up by their number. A learner whose units come
    in parts (``source-token``: [2]) gives a loss sum per part, each divided by its own count.
    """
    return (loss_sum * num_processes / step_tokens.clamp(min=1)).sum()


def latest_checkpoint(checkpoints: Path) -> Path | None:
    """The newest complete checkpoint (incomplete ones never got their final name)."""
    found = [p for p in checkpoints.glob("step-*") if p.name.removeprefix("step-").isdigit()]
    return max(found, key=lambda p: int(p.name.removeprefix("step-")), default=None)


def save_checkpoint(accelerator, checkpoints: Path, step: int, identity: dict, sharded=None, snapshots=None) -> None:
    """Model, optimizer, scheduler and RNG states, and the settings that made them (``run.json``),
    written aside and renamed into place, so a failed save never replaces or corrupts the last good checkpoint.
    ``sharded``: an FSDP2 run's (model, optimizer), saved by every rank as DCP shards beside accelerate's files;
    ``snapshots``: psft's snapshot log-probs of the steps ahead, saved by every rank (a resume reads them back)."""
    final, partial = checkpoints / f"step-{step}", checkpoints / f".step-{step}.partial"
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    if sharded is not None:
        sharding.save(*sharded, partial)
    if snapshots is not None:
        torch.save([[t.cpu() for t in micro] for micro in snapshots],
                   partial / f"snapshots-{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(partial / "run.json", identity)
        if final.exists():  # a rerun of the same step: the new one is complete, so swap it in
            shutil.rmtree(final)
        partial.rename(final)
    accelerator.wait_for_everyone()


# settings a resumed run may change: they alter neither the updates nor their order
RESUMABLE_CHANGES = ("resume", "force", "log_every", "save_every", "out", "report_to", "heldout_every", "heldout_text",
                     "gradient_checkpointing")
TRACKERS = ("tensorboard", "wandb", "trackio")


def report_targets(spec: str) -> list[str]:
    """The trackers ``--report-to`` names, each installed, or one line saying what to install."""
    import importlib.util

    names = [t.strip() for t in spec.split(",") if t.strip() and t.strip() != "none"]
    unknown = [t for t in names if t not in TRACKERS]
    if unknown:
        raise UsageError(f"--report-to: unknown tracker {unknown[0]!r}; known: {', '.join(TRACKERS)}, none")
    missing = [t for t in names if t != "tensorboard" and importlib.util.find_spec(t) is None]
    if missing:
        raise UsageError(f"--report-to {missing[0]}: {missing[0]} is not installed; pip install 'offline-rl[track]'")
    if "wandb" in names and not wandb_can_log():
        raise UsageError("--report-to wandb: no W&B credentials (set WANDB_API_KEY or run `wandb login`; "
                         "WANDB_MODE=offline logs locally)")
    return list(dict.fromkeys(names))


def wandb_can_log() -> bool:
    """Whether W&B would start without asking for a key: offline or disabled, a key in the environment, or one
    that ``wandb login`` stored in ~/.netrc (checked without importing wandb)."""
    import netrc
    import os

    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun") or os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def run_identity(cfg: TrainConfig, learner_cfg, model_path: str, manifests: dict[str, dict]) -> dict:
    """What a checkpoint's weights depend on: the settings, the learner's, the model and the data's shards."""
    identity = {k: v for k, v in asdict(cfg).items() if k not in RESUMABLE_CHANGES}
    for setting in ("micro_batch_tokens", "packing"):
        if not identity[setting]:
            del identity[setting]  # off: as runs saved before the setting existed
    if not cfg.lora_rank:  # no LoRA: as runs saved before the settings existed
        for name in [k for k in identity if k.startswith("lora_")]:
            del identity[name]
    if cfg.precision == "fp32":
        del identity["precision"]
    identity["model"] = str(Path(model_path).resolve()) if Path(model_path).exists() else model_path
    identity["data"] = [str(Path(p).resolve()) for p in manifests]
    identity["data_shards"] = [m.get("shards", []) for m in manifests.values()]
    identity.update({f"{cfg.learner}.{k}": v for k, v in asdict(learner_cfg).items()})
    return identity


def example_size(example) -> tuple[int, int]:
    """(rows, tokens per row) an example takes in a batch: a sequence is one row; a DPO pair two, both as
    long as the longer."""
    if isinstance(example, Pair):
        return 2, max(example_size(example.chosen)[1], example_size(example.rejected)[1])
    return 1, len(example.prompt_token_ids) + len(example.response_token_ids)


def example_tokens(example) -> int:
    """The tokens an example's sequences hold, padding left out (a DPO pair: both responses')."""
    if isinstance(example, Pair):
        return example_tokens(example.chosen) + example_tokens(example.rejected)
    return len(example.prompt_token_ids) + len(example.response_token_ids)


def length_groups(sizes: list[tuple[int, int]], max_tokens: int, packed: bool = False) -> list[list[int]]:
    """Positions into ``sizes`` grouped into micro-batches: longest first, each group cut before its size would
    exceed ``max_tokens`` (a single example may exceed it alone): padded, rows x its longest; ``packed``, the sum of
    rows x tokens. Equal lengths keep their order."""
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i][1])
    groups: list[list[int]] = []
    rows = tokens = 0  # the last group's
    for i in order:
        n_rows, width = sizes[i]
        if packed:
            grown = tokens + n_rows * width
        else:  # every row padded to the group's first, its longest
            grown = (rows + n_rows) * sizes[groups[-1][0]][1] if groups else 0
        if groups and grown <= max_tokens:
            groups[-1].append(i)
            rows, tokens = rows + n_rows, grown
        else:
            groups.append([i])
            rows, tokens = n_rows, n_rows * width
    return groups


def split_groups(groups: list[list[int]], count: int) -> list[list[int]]:
    """``groups`` split in halves, the one of most examples first, until there are ``count``: every rank runs as
    many micro-batches as the busiest (each holds as many examples as the others, so it can)."""
    groups = [list(group) for group in groups]
    while len(groups) < count:
        largest = max(range(len(groups)), key=lambda g: len(groups[g]))
        half = len(groups[largest]) // 2
        groups[largest : largest + 1] = [groups[largest][:half], groups[largest][half:]]
    return groups


def check_resume_identity(checkpoint: Path, identity: dict) -> None:
    saved_file = checkpoint / "run.json"
    if not saved_file.is_file():
        return  # a checkpoint from before run.json was saved
    saved = json.loads(saved_file.read_text())
    keys = sorted(set(saved) | set(identity), key=lambda k: ("." in k, k))  # a learner's own settings last
    differs = [f"{k} ({saved.get(k)!r}, now {identity.get(k)!r})" for k in keys if saved.get(k) != identity.get(k)]
    if differs:
        raise UsageError(f"--resume: {checkpoint} was trained with different {'; '.join(differs)}; "
                         "resume with the same settings, or choose another --out")


def keep_metrics_until(metrics: Path, step: int) -> None:
    """A resumed run's log: the records up to its checkpoint, so no step is logged twice."""
    if not metrics.exists():
        return
    kept = []
    for line in metrics.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line cut by the kill
            continue
        if isinstance(record, dict) and record.get("step", step + 1) <= step:
            kept.append(line + "\n")
    atomic_write(metrics, lambda f: f.write("".join(kept).encode()))


def save_final(model, tokenizer, state_dict, out: Path) -> None:
    """The Hugging Face checkpoint, written aside then moved in with config.json last: a save cut short
    (a full disk, a kill) never leaves a directory that loads as a model."""
    partial = out / ".final.partial"
    if partial.exists():
        shutil.rmtree(partial)
    model.save_pretrained(partial, safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(partial)
    for path in sorted(partial.iterdir(), key=lambda p: p.name == "config.json"):
        path.replace(out / path.name)
    partial.rmdir()


def fused_projection(learner: Learner, learner_cfg, cfg: TrainConfig, ratio_temperature):
    """The learner's per-token gradient rule when the fused projection can serve it, else None (the checkpointed
    path): a per-token loss (``token_grad``), chunked projection asked for, and the policy read at temperature 1
    only. Under FSDP2 the lm_head's unit is gathered while the projection runs (:mod:`offline_rl.sharding`). An
    lm_head with a bias is checked once the model is loaded."""
    rule = learner.token_grad(learner_cfg) if learner.token_grad is not None else None
    if rule is None or cfg.logit_chunk_size <= 0 or ratio_temperature not in (None, 1.0):
        return None
    return rule


def load_snapshots(checkpoint: Path | None, accelerator) -> deque:
    """psft's snapshot log-probs of the steps after a resumed checkpoint, as its run computed them (none: the loop
    takes a new snapshot at the next step)."""
    saved = checkpoint / f"snapshots-{accelerator.process_index}.pt" if checkpoint is not None else None
    if saved is None or not saved.is_file():
        return deque()
    return deque([[t.to(accelerator.device) for t in micro] for micro in torch.load(saved)])


def load_checkpoint(accelerator, model, optimizer, checkpoint: Path) -> None:
    """A checkpoint's states into this run: accelerate's files (scheduler, RNG; model and optimizer unless
    sharded), then an FSDP2 run's DCP shards."""
    accelerator.load_state(str(checkpoint))
    if sharding.is_sharded(model):
        sharding.load(model, optimizer, checkpoint)


def adapter_continues(cfg: TrainConfig, init_from: Path | None, model_path: str) -> bool:
    """Whether ``--init-from`` continues a LoRA run or continues under LoRA: then the adapter that run trained is
    merged in the model it saved, which must be ``--model``, at the checkpoint's step, and this run puts a fresh
    adapter on it, continuing the schedule (one line otherwise). A run without LoRA from one without: False."""
    if init_from is None:
        return False
    saved = json.loads((init_from / "run.json").read_text())
    if not (lora.used(cfg) or saved.get("lora_rank")):
        return False
    run = init_from.parent.parent
    summary = run / "train_summary.json"
    last = json.loads(summary.read_text()).get("last_step") if summary.is_file() else None
    if Path(model_path).resolve() != run.resolve() or last != int(init_from.name.removeprefix("step-")):
        raise UsageError(f"--init-from {init_from} under LoRA continues the schedule of a finished run on the model it "
                         f"saved: give its last checkpoint and --model {run}")
    return True


def continued_from(cfg: TrainConfig) -> tuple[Path | None, int]:
    """The checkpoint ``--init-from`` names and its step (0 without one)."""
    if cfg.init_from is None:
        if cfg.restart_schedule:
            raise UsageError("--restart-schedule needs --init-from")
        return None, 0
    path = Path(cfg.init_from)
    step = path.name.removeprefix("step-")
    if not (path.is_dir() and step.isdigit() and (path / "run.json").is_file()):
        raise UsageError(f"--init-from {path} is not a bin/train checkpoint (OUT/checkpoints/step-N)")
    return path.resolve(), int(step)


def lr_lambda(total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor
