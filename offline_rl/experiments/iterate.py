"""``bin/iterate``: rounds of collect -> train (-> evaluate), each collecting from the policy the last one trained.

One round is the offline setting; a few steps per round is expert iteration / iterated DPO; one step per round
with ``--learner grpo`` is online GRPO (with ``--round-batches --n 8``: as its recipe runs it, every sample of a
round's groups in that round's update). Every round writes ordinary directories, each usable on its own:

    OUT/round-K/data    an offline dataset sampled by the policy after round K-1 (its manifest names that
                        checkpoint; its collect_config.json repeats it with bin/collect)
    OUT/round-K/train   a bin/train run continuing the last one's optimizer moments and schedule (--init-from)
    OUT/round-K/eval    bin/eval results (with --eval-every)

One engine stays alive across rounds and takes each round's new weights in place (vLLM's own weight reload);
``--restart-engine`` starts a new one each round instead (to measure what that costs). A killed run resumes
when the same command is run again: finished rounds and stages are skipped, an unfinished collection goes on
from its last shard, an unfinished training starts over from the previous round's state, which makes the end
the same as an uninterrupted run's. OUT holds the final model, ``rounds.jsonl`` (one line per round: times,
samples, pass rate, training metrics) and ``iterate_summary.json`` (written last).

bin/collect's, bin/train's and bin/eval's flags are bin/iterate's too (one flag per name: ``--seed`` is the run's):
:class:`IterateConfig` holds a config of each stage and declares only what the rounds add.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from tqdm.auto import tqdm

from offline_rl import embedded, evaluate, views
from offline_rl.evaluate import EvalConfig
from offline_rl.learners import LEARNER_CONFIGS, LEARNERS
from offline_rl.train import (
    TrainConfig,
    check_fit,
    latest_checkpoint,
    learner_config,
    micro_batch,
    report_targets,
    run_train,
)
from rollout.collect import CollectConfig, run_collect
from rollout.dataset import is_complete, read_manifest, write_json
from rollout.engines import LiveEngine, prompt_seed
from rollout.files import TextError, hold_directory
from rollout.models import resolve_model
from rollout.runtime import (
    CommandContext,
    NoExamples,
    UsageError,
    check_rerun_settings,
    command_line,
    flag_names,
    output_to,
    parse_config,
    pause_point,
    print_config,
    stage,
    with_flags,
)
from rollout.sources import SourceError, load_source

DEFAULT_STEPS = 100


@dataclass
class IterateConfig:
    """bin/iterate's own settings; each round's collection, training and evaluation take the rest from the stage
    configs it holds, whose flags are bin/iterate's too (bin/collect's, bin/train's, bin/eval's, one flag per name)."""

    out: str = field(default=None, metadata={"help": "output directory (required); run again to resume"})
    sample_like: str = field(default=None, metadata={
        "help": "sample as this collected dataset was (its model, prompts and sampling) and share its prompts out over "
                "the rounds: its iterated twin; flags given override"})
    rounds: int = field(default=4, metadata={"help": "rounds of collect -> train", "min": 1})
    steps: int = field(default=None, metadata={
        "help": f"optimizer steps over all rounds, split evenly between them (default: {DEFAULT_STEPS}; steps = "
                "rounds: online)", "min": 1})
    prompts_per_round: int = field(default=64, metadata={
        "help": "prompts sampled per round; round K takes the K-th window of them from --source after --skip "
                "(cycling)", "min": 1})
    round_batches: bool = field(default=False, metadata={
        "help": "each round's steps go once through all the samples its learner trains on, batch = those examples / "
                "the round's steps (GRPO's recipe: every sample of a round's groups in its update; bin/train "
                "--whole-batches; needs --steps) instead of --batch-size", "advanced": True})
    eval_every: int = field(default=0, metadata={
        "help": "evaluate every N rounds and after the last (0: never)", "min": 0})
    restart_engine: bool = field(default=False, metadata={
        "help": "start a new engine every round instead of loading the new weights into the live one",
        "advanced": True})
    force: bool = field(default=False, metadata={
        "help": "reuse an OUT made with other settings, or one bin/iterate did not make"})
    collect: CollectConfig = stage(CollectConfig())  # what and how each round samples (its --model: the initial policy)
    train: TrainConfig = stage(TrainConfig(learner="rft", batch_size=16))  # each round's training; --seed: the run's
    evaluation: EvalConfig = stage(EvalConfig())  # what --eval-every evaluates


# the stages' flags each round sets itself (they would be ignored): refused, with what to use instead
SET_BY_ROUNDS = {"data": "; --sample-like DATASET samples as a dataset was", "prompts": "; --prompts-per-round",
                 "whole_batches": "; --round-batches", "save_every": "", "log_every": "", "init_from": "",
                 "schedule_steps": "", "resume": "", "shard": "", "data_parallel_size": "", "ray_address": "",
                 "name": ""}
# bin/iterate --help: these of its stages' flags too (the rest: --help-all)
COMMON = ("model", "n", "seed", "temperature", "max_tokens", "backend", "learner", "batch_size", "lr",
          "benchmarks", "k")
# bin/train's settings recorded in iterate_config.json (the rest of bin/train's and the learner's: iterate_train_config)
TRAIN_RECORDED = ("learner", "batch_size", "lr", "warmup_ratio", "restart_schedule", "seed", "report_to")
# settings a resumed run may change: they alter no round's data or weights
RESUMABLE = ("out", "force", "restart_engine", "report_to", "eval_every", "benchmarks", "benchmark_dir", "k",
             "problems")
MODEL_FILES_SKIPPED = {"train_config.json", "learner_config.json", "metrics.jsonl", "train_summary.json", "README.md",
                       "evaluations.json"}  # the last round's own; OUT is the weights of the whole run


def main(argv: list[str] | None = None, *, context: CommandContext | None = None) -> dict:
    given: set[str] = set()
    cfg, *learner_configs = parse_config((IterateConfig, *LEARNER_CONFIGS), argv, "iterate", __doc__, given=given,
                                         shown=1, common=COMMON)
    learner_cfg = learner_config(cfg.train.learner, learner_configs, given - flag_names(IterateConfig))
    return run_iterate(cfg, learner_cfg, context=replace(context or embedded.context(), given=frozenset(given)))


def run_iterate(cfg: IterateConfig, learner_cfg=None, *, context: CommandContext | None = None) -> dict:
    """``bin/iterate``. ``learner_cfg``: the learner's own settings (its defaults if None). From the ``context``
    (default: the embedded one): the world, the initial policy when none is named, the settings given (those
    ``--sample-like`` leaves as they are), and a live engine to sample with (bin/compare's), used and left open."""
    context = context or embedded.context()
    cfg = resolve(cfg, context.given)
    learner = LEARNERS.get(cfg.train.learner)
    if cfg.out is None:
        raise UsageError("--out is required")
    if learner is None:
        raise UsageError(f"unknown learner {cfg.train.learner!r}; known: {', '.join(LEARNERS)}")
    if cfg.steps % cfg.rounds:
        raise UsageError(f"--steps {cfg.steps} do not split evenly into {cfg.rounds} rounds")
    cfg.collect.require_own_engine("iterate")
    learner_cfg = learner_cfg or learner.config()
    if learner.check is not None:  # the learner's own inputs (chord's expert dataset), before round 1
        learner.check(learner_cfg)
    report_targets(cfg.train.report_to)
    model = resolve_model(cfg.collect.model or context.default_model)
    rounds = Rounds(cfg, learner_cfg, model, Path(cfg.out), prompt_windows(cfg, context.world), context)
    view = cfg.train.view or learner.views[0]
    views.check_view(learner, view, {})
    if view in ("pairs", "groups") and cfg.collect.n < 2:  # one sample per prompt: no pair, no advantage
        raise UsageError(f"--n {cfg.collect.n}: {learner.name} trains on the {view} view ({views.VIEWS[view]}), which "
                         "needs two or more samples per prompt; no round would train")
    if not cfg.round_batches:  # a round's own batch (--round-batches) is whole micro-batches by construction
        micro_batch(cfg.train.batch_size, cfg.train.micro_batch_size, 1)
    check_fit(cfg.train, model)  # LoRA, precision, activation checkpointing: refused now, not in round 1's training
    for name in cfg.evaluation.benchmarks.split(",") if cfg.eval_every else []:  # bad ones fail now, not in round 5
        if name.strip():
            evaluate.load_benchmark(name.strip(), cfg.evaluation)

    out = Path(cfg.out)
    hold_directory(out, "iterate", force=cfg.force, owned=lambda d: (d / "iterate_config.json").is_file())
    recorded = settings(cfg)
    # bin/train's settings that the rounds leave as given, and the learner's
    set_each_round = rounds.train_settings(1)
    training = {**{k: v for k, v in asdict(cfg.train).items() if k not in recorded and k not in set_each_round},
                **asdict(learner_cfg)}
    check_rerun_settings(out / "iterate_config.json", {k: v for k, v in recorded.items() if k not in RESUMABLE}, out,
                         cfg.force, defaults=settings(IterateConfig()), renamed={"data": "sample_like"})
    check_rerun_settings(out / "iterate_train_config.json", training, out, cfg.force)
    print_config(recorded, training, out=out)
    write_json(out / "iterate_config.json", recorded)
    write_json(out / "iterate_train_config.json", training)
    return rounds.run()


def resolve(cfg: IterateConfig, given: frozenset[str]) -> IterateConfig:
    """``cfg`` with its derived settings, once: the total steps, and with ``--sample-like`` the sampling of that
    dataset for each setting not ``given``. One line for a flag that would be ignored."""
    ignored = sorted(given & set(SET_BY_ROUNDS))
    if ignored:
        raise UsageError(f"--{ignored[0].replace('_', '-')} is set by bin/iterate itself each round"
                         f"{SET_BY_ROUNDS[ignored[0]]}")
    if cfg.steps is None:
        if cfg.round_batches:
            raise UsageError("--round-batches needs --steps: each round's batch is its examples / its share of the "
                             "steps")
        cfg = replace(cfg, steps=DEFAULT_STEPS)
    return sample_like(cfg, given) if cfg.sample_like else cfg


def settings(cfg: IterateConfig) -> dict:
    """The run's settings, one per flag, as ``iterate_config.json`` records them: its own, its collection's and
    evaluation's but those each round sets, and bin/train's :data:`TRAIN_RECORDED`."""
    stages = {**asdict(cfg.evaluation), **{k: getattr(cfg.train, k) for k in TRAIN_RECORDED}, **asdict(cfg.collect)}
    own = {f.name: getattr(cfg, f.name) for f in fields(cfg) if not f.metadata.get("stage")}
    return {**{k: v for k, v in stages.items() if k not in SET_BY_ROUNDS}, **own}


def prompt_windows(cfg: IterateConfig, world) -> int:
    """How many windows of ``--prompts-per-round`` the source holds after ``--skip`` (one line if none)."""
    source = cfg.collect
    try:
        prompts = len(load_source(source.source, source.format, source.question_field, source.answer_field,
                                  source.hub_split, world).records)
    except (SourceError, FileNotFoundError, TextError) as e:
        raise UsageError(str(e)) from None
    windows = (prompts - source.skip) // cfg.prompts_per_round
    if windows <= 0:
        raise UsageError(f"--prompts-per-round {cfg.prompts_per_round} exceeds the {prompts - source.skip} prompts of "
                         f"{source.source} (after --skip {source.skip})")
    return windows


def sample_like(cfg: IterateConfig, given: frozenset[str]) -> IterateConfig:
    """``cfg`` with the sampling of the dataset ``--sample-like`` names, and its prompts shared out over the rounds."""
    like = Path(cfg.sample_like)
    try:
        collected = json.loads((like / "collect_config.json").read_text())
        manifest = read_manifest(like)
    except (OSError, ValueError):
        raise UsageError(f"--sample-like {like} is not a dataset made by bin/collect (no collect_config.json)") \
            from None
    if manifest.get("complete") is not True:
        raise UsageError(f"--sample-like {like} is unfinished (complete: false); run its bin/collect again to "
                         "finish it")
    found = {name: collected[name] for name in ("source", "format", "template", "n", "temperature", "top_p",
                                               "max_tokens", "stop", "extraction", "skip") if name in collected}
    found["model"] = manifest["model"]
    prompts = manifest["counts"]["prompts"] + manifest.get("prompts_too_long", 0)
    # the dataset's responses shared out: a group size of one's own (--n) samples fewer or more prompts per round
    n = cfg.collect.n if "n" in given else found.get("n", cfg.collect.n)
    found["prompts_per_round"] = max(1, prompts * found.get("n", cfg.collect.n) // (n * cfg.rounds))
    return with_flags(cfg, {k: v for k, v in found.items() if k not in given})


class Rounds:
    """The state one run carries from round to round: the live engine and the policy it holds."""

    def __init__(self, cfg: IterateConfig, learner_cfg, model: str, out: Path, windows: int, context: CommandContext):
        self.cfg, self.learner_cfg, self.context = cfg, learner_cfg, replace(context, given=frozenset())
        self.initial, self.out, self.windows = model, out, windows
        self.own_engine = context.live is None
        self.live = context.live or LiveEngine(cfg.collect, restart=cfg.restart_engine)

    def last_trained(self, k: int) -> int | None:
        """The latest round before round k that trained (a round with nothing to train on leaves the policy as it
        was)."""
        return next((j for j in range(k - 1, 0, -1)
                     if (self.out / f"round-{j}" / "train" / "train_summary.json").exists()), None)

    def policy(self, k: int) -> str:
        """The policy that samples round k: the initial model, then the latest trained round's checkpoint."""
        j = self.last_trained(k)
        return self.initial if j is None else str(self.out / f"round-{j}" / "train")

    def run(self) -> dict:
        cfg, out = self.cfg, self.out
        bar = tqdm(total=cfg.rounds, desc=f"iterate {cfg.train.learner}", unit="round", file=sys.stderr)
        start = time.time()
        try:
            for k in range(1, cfg.rounds + 1):
                record_file = out / f"round-{k}" / "round.json"
                if record_file.exists():
                    bar.update(1)
                    continue
                record = self.round(k)
                write_json(record_file, record)  # last: its presence marks a finished round
                self.forget_optimizer(k)
                bar.update(1)
                bar.set_postfix(pass_rate=f"{record['pass_rate']:.3f}",
                                **({"eval": f"{record['eval_avg']:.1f}"} if record.get("eval_avg") is not None else {}))
        finally:
            bar.close()
            if self.own_engine:
                self.live.close()
        return self.finish(time.time() - start)

    def round(self, k: int) -> dict:
        cfg, rdir = self.cfg, self.out / f"round-{k}"
        data, trained = rdir / "data", rdir / "train"
        rdir.mkdir(parents=True, exist_ok=True)
        record = {"round": k, "policy": self.policy(k), "engine_ms": None, "engine": None}
        stages = tqdm(total=3 if self.evaluates(k) else 2, desc=f"round {k}/{cfg.rounds}", unit="stage", leave=False,
                      position=1, file=sys.stderr)
        with (rdir / "log.txt").open("a") as log, output_to(log):
            if not is_complete(data):
                stages.set_postfix_str("collect")
                self.hold(record["policy"], record)
                pause_point(f"iterate:round-{k}:collect")
                collect_cfg = self.collect_config(k, data)
                print(command_line("collect", collect_cfg), flush=True)
                run_collect(collect_cfg, context=replace(self.context, engine=self.live.engine))
            stages.update(1)
            pause_point(f"iterate:round-{k}:collected")
            if not (trained / "train_summary.json").exists():
                stages.set_postfix_str("train")
                self.live.make_room()  # an accelerator's memory goes to the training
                train_cfg = replace(cfg.train, **self.train_settings(k))
                print(command_line("train", train_cfg, self.learner_cfg), flush=True)
                try:
                    run_train(train_cfg, self.learner_cfg, context=self.context)
                except NoExamples as e:  # recorded; the next round samples from the same policy
                    record["skipped"] = str(e)
                    print(f"round {k}: nothing to train on ({e}); the policy stays as it was", flush=True)
            stages.update(1)
            if self.evaluates(k) and "skipped" not in record:
                stages.set_postfix_str("eval")
                self.hold(str(trained), record)
                eval_cfg = self.eval_config(k, trained, rdir / "eval")
                print(command_line("eval", eval_cfg), flush=True)
                results = evaluate.run_eval(eval_cfg, context=replace(self.context, engine=self.live.engine))
                scores = [m[f"avg@{eval_cfg.k}"] for m in results["benchmarks"].values()]
                record["eval_avg"] = 100 * sum(scores) / max(1, len(scores))
                record["eval_seconds"] = results["wall_seconds"]
                stages.update(1)
        stages.close()
        return {**record, **round_record(data, trained if "skipped" not in record else None)}

    def hold(self, model: str, record: dict) -> None:
        """The engine holds ``model``; the round's record keeps its first change of weights: how long it took, and
        what it was (an engine started, or weights loaded in place)."""
        ms = self.live.hold(model)
        if ms is not None and record["engine_ms"] is None:
            record["engine_ms"], record["engine"] = ms, self.live.last

    def evaluates(self, k: int) -> bool:
        return bool(self.cfg.eval_every) and (k % self.cfg.eval_every == 0 or k == self.cfg.rounds)

    def collect_config(self, k: int, data: Path) -> CollectConfig:
        """Round k's collection: its window of prompts, from the policy after round k-1, with its own seed."""
        cfg = self.cfg
        return replace(cfg.collect, out=str(data), model=self.policy(k), prompts=cfg.prompts_per_round,
                       skip=cfg.collect.skip + ((k - 1) % self.windows) * cfg.prompts_per_round,
                       seed=prompt_seed(cfg.train.seed, f"round-{k}"), force=False)

    def train_settings(self, k: int) -> dict:
        """What each round sets of bin/train's settings: round k's data and policy, its share of the steps, one
        schedule over the run, the optimizer state of round k-1 (--init-from), and how to pick up after a kill."""
        cfg, steps = self.cfg, self.cfg.steps // self.cfg.rounds
        trained = self.out / f"round-{k}" / "train"
        j = self.last_trained(k)  # whose optimizer state and schedule position this round continues
        last = self.out / f"round-{j}" / "train" if j is not None else None
        last_step = json.loads((last / "train_summary.json").read_text())["last_step"] if last is not None else 0
        restart = cfg.train.restart_schedule
        settings = dict(
            data=str(self.out / f"round-{k}" / "data"), out=str(trained), model=self.policy(k), steps=steps,
            # a learner anchored to its base (asft) is anchored to the run's initial model in every round
            base_model=self.initial if LEARNERS[cfg.train.learner].base_kl else None,
            whole_batches=cfg.round_batches, save_every=steps, log_every=1,
            schedule_steps=steps if restart else cfg.steps,
            init_from=str(last / "checkpoints" / f"step-{last_step}") if last is not None else None,
            restart_schedule=restart and last is not None, resume=False, force=False)
        if latest_checkpoint(trained / "checkpoints") is not None:  # killed while saving the final model
            settings["resume"] = True
        elif trained.exists():  # killed mid-round: start the round's training over from the last round's state
            settings["force"] = True
        return settings

    def eval_config(self, k: int, model: Path, where: Path) -> EvalConfig:
        return replace(self.cfg.evaluation, model=str(model), name=f"round-{k}", seed=self.cfg.train.seed,
                       out=str(where), force=True, stop=None)  # stop: the template's

    def forget_optimizer(self, k: int) -> None:
        """Once round k is done: every optimizer state older than the latest trained round's, the one that goes on."""
        latest = self.last_trained(k + 1)
        for j in range(1, (latest or 1)):
            shutil.rmtree(self.out / f"round-{j}" / "train" / "checkpoints", ignore_errors=True)

    def finish(self, seconds: float) -> dict:
        cfg, out = self.cfg, self.out
        records = [json.loads((out / f"round-{k}" / "round.json").read_text()) for k in range(1, cfg.rounds + 1)]
        final = Path(self.policy(cfg.rounds + 1))  # the latest trained round's model (the initial one if none trained)
        for path in final.iterdir():  # OUT loads as the final model (hard links: no copy of the weights)
            if path.is_file() and not path.name.startswith(".") and path.name not in MODEL_FILES_SKIPPED:
                (out / path.name).unlink(missing_ok=True)
                try:
                    os.link(path, out / path.name)
                except OSError:
                    shutil.copy2(path, out / path.name)
        with (out / "rounds.jsonl").open("w") as f:
            for r in records:
                f.write(json.dumps({k: v for k, v in r.items() if k != "steps"}) + "\n")
        with (out / "metrics.jsonl").open("w") as f:
            for r in records:
                for step in r["steps"]:
                    f.write(json.dumps({"round": r["round"], **step}) + "\n")
        summary = {
            "learner": cfg.train.learner, "rounds": cfg.rounds,
            "steps": sum(r["last_step"] - r["first_step"] for r in records),
            "skipped_rounds": [r["round"] for r in records if "skipped" in r],
            "final_model": str(final), "responses": sum(r["responses"] for r in records),
            "sampled_tokens": sum(r["sampled_tokens"] for r in records),
            "expert_tokens": sum(r.get("expert_tokens", 0) for r in records),  # chord's, trained on: not sampled
            "collect_seconds": round(sum(r["collect_seconds"] or 0 for r in records), 2),
            "train_seconds": round(sum(r["train_seconds"] for r in records), 2),
            "eval_seconds": round(sum(r.get("eval_seconds") or 0 for r in records), 2),
            "seconds": round(sum((r["collect_seconds"] or 0) + r["train_seconds"] for r in records), 2),
            "engine": "restarted each round" if cfg.restart_engine else "live, weights loaded in place",
            **engine_times(records, cfg.restart_engine), "wall_seconds_this_run": round(seconds, 2),
        }
        write_json(out / "iterate_summary.json", summary)  # last: its presence marks a finished run
        expert = f" and {summary['expert_tokens']} expert tokens trained on" if summary["expert_tokens"] else ""
        print(f"{cfg.rounds} rounds of {cfg.train.learner}: {summary['responses']} responses sampled "
              f"({summary['sampled_tokens']} tokens){expert}, {summary['steps']} steps; "
              f"collect {summary['collect_seconds']:.0f} s, "
              f"train {summary['train_seconds']:.0f} s; {engine_line(summary)} -> {out}")
        return summary


def engine_times(records: list[dict], restart: bool) -> dict:
    """The engine's first start apart from what each later round's new weights took (loaded in place; a new engine
    with ``restart``), in ms; None where there was none (bin/compare's engine was running already; an engine started
    again by a resumed run counts in neither). Rounds recorded before rounds said which hold was which: the first
    round's was the start."""
    holds = [(r.get("engine") or ("started" if i == 0 else "loaded in place"), r["engine_ms"])
             for i, r in enumerate(records) if r["engine_ms"] is not None]
    first = next((i for i, (what, _) in enumerate(holds) if what == "started"), None)
    steady = "started" if restart else "loaded in place"
    later = [ms for i, (what, ms) in enumerate(holds) if i != first and what == steady]
    return {"engine_start_ms": round(holds[first][1], 1) if first is not None else None,
            "engine_ms_per_round": round(sum(later) / len(later), 1) if later else None}


def engine_line(summary: dict) -> str:
    start, per_round = summary["engine_start_ms"], summary["engine_ms_per_round"]
    started = "engine running already" if start is None else f"engine started in {start / 1000:.1f} s"
    then = "no new weights after it" if per_round is None else f"then {per_round:.1f} ms per round's new weights"
    return f"{started}, {then} ({summary['engine']})"


def round_record(data: Path, trained: Path | None) -> dict:
    """What a finished round sampled and trained, from its dataset's manifest and its training's files (``trained``
    None: a round with nothing to train on)."""
    manifest = read_manifest(data)
    if trained is None:
        summary, steps = {"seconds": 0.0, "examples": 0, "first_step": 0, "last_step": 0}, []
    else:
        summary = json.loads((trained / "train_summary.json").read_text())
        steps = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {
        "prompts": manifest["counts"]["prompts"], "responses": manifest["counts"]["responses"],
        "sampled_tokens": round(manifest["summary"]["mean_response_tokens"] * manifest["counts"]["responses"]),
        "pass_rate": manifest["summary"]["pass_rate"], "collect_seconds": manifest.get("wall_seconds"),
        "train_seconds": summary["seconds"], "examples": summary["examples"],
        "expert_tokens": sum(step.get("expert_tokens", 0) for step in steps),  # chord: the expert rows' tokens
        "first_step": summary["first_step"], "last_step": summary["last_step"], "steps": steps,
    }
