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

import rewards
from offline_rl import evaluate
from offline_rl.embedded import world
from offline_rl.embedded.base_model import DEFAULT_BASE_MODEL
from offline_rl.learners import LEARNER_CONFIGS, LEARNERS
from offline_rl.train import TrainConfig, latest_checkpoint, learner_config, micro_batch, report_targets, run_train
from offline_rl.views import check_view
from rollout.collect import CollectConfig, run_collect
from rollout.dataset import is_complete, read_manifest, write_json
from rollout.engines import EngineFlags, LiveEngine, SamplingFlags, prompt_seed
from rollout.files import hold_directory
from rollout.models import resolve_model
from rollout.runtime import (
    NoExamples,
    UsageError,
    check_rerun_settings,
    command_line,
    output_to,
    parse_config,
    pause_point,
    print_config,
    save_config,
)
from rollout.sources import SourceError, load_source


@dataclass
class IterateConfig(SamplingFlags, EngineFlags):
    learner: str = field(default="rft", metadata={"help": f"learner trained each round: {', '.join(LEARNERS)}; its own flags and bin/train's (--view, --beta, ...) are taken too"})
    out: str = field(default=None, metadata={"help": "output directory (required); run again to resume"})
    model: str = field(default=None, metadata={"help": "initial policy (default: the embedded base model)"})
    data: str = field(default=None, metadata={"help": "sample as this collected dataset was (its model, prompts and sampling) and share its prompts out over the rounds: its iterated twin; flags given override"})
    source: str = field(default="world:train", metadata={"help": "prompts, as bin/collect takes them; round K takes the K-th window of --prompts-per-round after --skip (cycling)"})
    skip: int = field(default=0, metadata={"help": "skip the first N prompts of --source", "min": 0, "advanced": True})
    format: str = field(default="auto", metadata={"help": "field layout of --source, as bin/collect takes it", "advanced": True})
    template: str = field(default=None, metadata={"help": "prompt template, as bin/collect takes it", "advanced": True})
    rounds: int = field(default=4, metadata={"help": "rounds of collect -> train", "min": 1})
    steps: int = field(default=100, metadata={"help": "optimizer steps over all rounds, split evenly between them (steps = rounds: online)", "min": 1})
    prompts_per_round: int = field(default=64, metadata={"help": "prompts sampled per round", "min": 1})
    n: int = field(default=4, metadata={"help": "responses sampled per prompt (the group size)", "min": 1})
    extraction: str = field(default=rewards.DEFAULT_EXTRACTION, metadata={"help": "answer extraction of the verifier", "choices": list(rewards.EXTRACTIONS), "advanced": True})
    seed: int = field(default=0, metadata={"help": "run seed: training order, and each round's sampling seed derives from it"})
    batch_size: int = field(default=16, metadata={"help": "sequences (DPO: pairs) per optimizer step", "min": 1})
    round_batches: bool = field(default=False, metadata={"help": "each round's steps go once through all the samples its learner trains on, batch = those examples / the round's steps (GRPO's recipe: every sample of a round's groups in its update; bin/train --whole-batches) instead of --batch-size", "advanced": True})
    lr: float = field(default=2e-4, metadata={"help": "peak learning rate", "above": 0, "max": 1})
    warmup_ratio: float = field(default=0.05, metadata={"help": "share of the schedule spent warming up", "min": 0, "max": 1, "advanced": True})
    restart_schedule: bool = field(default=False, metadata={"help": "start the warm-up + cosine schedule over each round (default: one schedule over all rounds); the optimizer's moments carry over either way", "advanced": True})
    eval_every: int = field(default=0, metadata={"help": "evaluate every N rounds and after the last (0: never)", "min": 0})
    benchmarks: str = field(default=",".join(world.TEST_SPLITS), metadata={"help": "what --eval-every evaluates, as bin/eval takes it"})
    k: int = field(default=4, metadata={"help": "samples per problem in evaluation", "min": 1})
    problems: int = field(default=None, metadata={"help": "evaluate only the first N problems of each benchmark", "min": 1})
    report_to: str = field(default="tensorboard", metadata={"help": "trackers of each round's training, as bin/train takes them: tensorboard, wandb, trackio, none", "advanced": True})
    restart_engine: bool = field(default=False, metadata={"help": "start a new engine every round instead of loading the new weights into the live one", "advanced": True})
    force: bool = field(default=False, metadata={"help": "reuse an OUT made with other settings, or one bin/iterate did not make"})


# settings a resumed run may change: they alter no round's data or weights
RESUMABLE = ("out", "force", "restart_engine", "report_to", "eval_every", "benchmarks", "k", "problems")
MODEL_FILES_SKIPPED = {"train_config.json", "learner_config.json", "metrics.jsonl", "train_summary.json", "README.md",
                       "evaluations.json"}  # the last round's own; OUT is the weights of the whole run


def main(argv: list[str] | None = None) -> dict:
    given: set[str] = set()
    cfg, train_cfg, *learner_configs = parse_config((IterateConfig, TrainConfig, *LEARNER_CONFIGS), argv, "iterate",
                                                    __doc__, given=given, shown=1)
    learner_cfg = learner_config(cfg.learner, learner_configs, given - {f.name for f in fields(IterateConfig)})
    return run_iterate(resolve(cfg, given), train_cfg, learner_cfg, given=given)


def resolve(cfg: IterateConfig, given: set[str]) -> IterateConfig:
    """``cfg`` with the sampling of the dataset ``--data`` names, for each setting not given."""
    return sample_like(cfg, given) if cfg.data else cfg


def run_iterate(cfg: IterateConfig, train_cfg: TrainConfig | None = None, learner_cfg=None, *,
                given: set[str] = frozenset(), engine: LiveEngine | None = None) -> dict:
    """``bin/iterate``. ``train_cfg``: bin/train's settings for every round (the rounds set their own data, model,
    steps, schedule, rate and batch); ``engine``: a live engine to sample with (bin/compare's), used and left open."""
    train_cfg = train_cfg or TrainConfig()
    if cfg.out is None:
        raise UsageError("--out is required")
    if cfg.learner not in LEARNERS:
        raise UsageError(f"unknown learner {cfg.learner!r}; known: {', '.join(LEARNERS)}")
    if cfg.steps % cfg.rounds:
        raise UsageError(f"--steps {cfg.steps} do not split evenly into {cfg.rounds} rounds")
    cfg.require_own_engine("iterate")
    learner_cfg = learner_cfg or LEARNERS[cfg.learner].config()
    train_cfg = replace(train_cfg, learner=cfg.learner)
    report_targets(cfg.report_to)
    model = resolve_model(cfg.model or str(DEFAULT_BASE_MODEL))
    rounds = Rounds(cfg, train_cfg, learner_cfg, model, Path(cfg.out), prompt_windows(cfg), engine)
    owned = sorted((given & set(rounds.train_settings(1))) - {f.name for f in fields(IterateConfig)})
    if owned:
        raise UsageError(f"--{owned[0].replace('_', '-')} is set by bin/iterate itself each round")
    check_view(LEARNERS[cfg.learner], train_cfg.view or LEARNERS[cfg.learner].views[0], {})
    if not cfg.round_batches:  # a round's own batch (--round-batches) is whole micro-batches by construction
        micro_batch(cfg.batch_size, train_cfg.micro_batch_size, 1)
    for name in cfg.benchmarks.split(",") if cfg.eval_every else []:  # bad benchmarks fail now, not in round 5
        if name.strip():
            evaluate.load_benchmark(name.strip(), evaluate.EvalConfig())

    out = Path(cfg.out)
    hold_directory(out, "iterate", force=cfg.force, owned=lambda d: (d / "iterate_config.json").is_file())
    settings = {k: v for k, v in asdict(cfg).items() if k not in RESUMABLE}
    # bin/train's settings that the rounds leave as given, and the learner's: flags of bin/iterate too
    ours = {f.name for f in fields(IterateConfig)} | set(rounds.train_settings(1))
    training = {**{k: v for k, v in asdict(train_cfg).items() if k not in ours}, **asdict(learner_cfg)}
    check_rerun_settings(out / "iterate_config.json", settings, out, cfg.force)
    check_rerun_settings(out / "iterate_train_config.json", training, out, cfg.force)
    print_config(cfg, training, out=out)
    save_config(cfg, out / "iterate_config.json")
    write_json(out / "iterate_train_config.json", training)
    return rounds.run()


def prompt_windows(cfg: IterateConfig) -> int:
    """How many windows of ``--prompts-per-round`` the source holds after ``--skip`` (one line if none)."""
    try:
        prompts = len(load_source(cfg.source, cfg.format, None, None, "test", world.load_split).records)
    except (SourceError, FileNotFoundError) as e:
        raise UsageError(str(e)) from None
    windows = (prompts - cfg.skip) // cfg.prompts_per_round
    if windows <= 0:
        raise UsageError(f"--prompts-per-round {cfg.prompts_per_round} exceeds the {prompts - cfg.skip} prompts of "
                         f"{cfg.source} (after --skip {cfg.skip})")
    return windows


def sample_like(cfg: IterateConfig, given: set[str]) -> IterateConfig:
    """``cfg`` with the sampling of the dataset ``--data`` names, and its prompts shared out over the rounds."""
    like = Path(cfg.data)
    try:
        collected = json.loads((like / "collect_config.json").read_text())
        manifest = read_manifest(like)
    except (OSError, ValueError):
        raise UsageError(f"--data {like} is not a dataset made by bin/collect (no collect_config.json)") from None
    if manifest.get("complete") is not True:
        raise UsageError(f"--data {like} is unfinished (complete: false); run its bin/collect again to finish it")
    settings = {name: collected[name] for name in ("source", "format", "template", "n", "temperature", "top_p",
                                                  "max_tokens", "stop", "extraction", "skip") if name in collected}
    settings["model"] = manifest["model"]
    prompts = manifest["counts"]["prompts"] + manifest.get("prompts_too_long", 0)
    # the dataset's responses shared out: a group size of one's own (--n) samples fewer or more prompts per round
    n = cfg.n if "n" in given else settings.get("n", cfg.n)
    settings["prompts_per_round"] = max(1, prompts * settings.get("n", cfg.n) // (n * cfg.rounds))
    return replace(cfg, **{k: v for k, v in settings.items() if k not in given})


class Rounds:
    """The state one run carries from round to round: the live engine and the policy it holds."""

    def __init__(self, cfg: IterateConfig, train_cfg: TrainConfig, learner_cfg, model: str, out: Path, windows: int,
                 engine: LiveEngine | None = None):
        self.cfg, self.train_cfg, self.learner_cfg = cfg, train_cfg, learner_cfg
        self.initial, self.out, self.windows = model, out, windows
        self.own_engine = engine is None
        self.live = engine or LiveEngine(cfg, restart=cfg.restart_engine)

    def last_trained(self, k: int) -> int | None:
        """The latest round before round k that trained (a round with nothing to train on leaves the policy as it was)."""
        return next((j for j in range(k - 1, 0, -1) if (self.out / f"round-{j}" / "train" / "train_summary.json").exists()),
                    None)

    def policy(self, k: int) -> str:
        """The policy that samples round k: the initial model, then the latest trained round's checkpoint."""
        j = self.last_trained(k)
        return self.initial if j is None else str(self.out / f"round-{j}" / "train")

    def run(self) -> dict:
        cfg, out = self.cfg, self.out
        bar = tqdm(total=cfg.rounds, desc=f"iterate {cfg.learner}", unit="round", file=sys.stderr)
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
        record = {"round": k, "policy": self.policy(k), "engine_ms": None}
        stages = tqdm(total=3 if self.evaluates(k) else 2, desc=f"round {k}/{cfg.rounds}", unit="stage", leave=False,
                      position=1, file=sys.stderr)
        with (rdir / "log.txt").open("a") as log, output_to(log):
            if not is_complete(data):
                stages.set_postfix_str("collect")
                record["engine_ms"] = self.live.hold(record["policy"])
                pause_point(f"iterate:round-{k}:collect")
                collect_cfg = self.collect_config(k, data)
                print(command_line("collect", collect_cfg), flush=True)
                run_collect(collect_cfg, world=world.load_split, engine=self.live.engine)
            stages.update(1)
            pause_point(f"iterate:round-{k}:collected")
            if not (trained / "train_summary.json").exists():
                stages.set_postfix_str("train")
                self.live.make_room()  # an accelerator's memory goes to the training
                train_cfg = replace(self.train_cfg, **self.train_settings(k))
                print(command_line("train", train_cfg, self.learner_cfg), flush=True)
                try:
                    run_train(train_cfg, self.learner_cfg)
                except NoExamples as e:  # recorded; the next round samples from the same policy
                    record["skipped"] = str(e)
                    print(f"round {k}: nothing to train on ({e}); the policy stays as it was", flush=True)
            stages.update(1)
            if self.evaluates(k) and "skipped" not in record:
                stages.set_postfix_str("eval")
                swap = self.live.hold(str(trained))
                record["engine_ms"] = swap if record["engine_ms"] is None else record["engine_ms"]
                eval_cfg = self.eval_config(k, trained, rdir / "eval")
                print(command_line("eval", eval_cfg), flush=True)
                results = evaluate.run_eval(eval_cfg, engine=self.live.engine)
                scores = [m[f"avg@{cfg.k}"] for m in results["benchmarks"].values()]
                record["eval_avg"] = 100 * sum(scores) / max(1, len(scores))
                record["eval_seconds"] = results["wall_seconds"]
                stages.update(1)
        stages.close()
        return {**record, **round_record(data, trained if "skipped" not in record else None)}

    def evaluates(self, k: int) -> bool:
        return bool(self.cfg.eval_every) and (k % self.cfg.eval_every == 0 or k == self.cfg.rounds)

    def collect_config(self, k: int, data: Path) -> CollectConfig:
        """Round k's collection: its window of prompts, from the policy after round k-1, with its own seed."""
        cfg = self.cfg
        return CollectConfig(
            out=str(data), model=self.policy(k), source=cfg.source, format=cfg.format,
            skip=cfg.skip + ((k - 1) % self.windows) * cfg.prompts_per_round, prompts=cfg.prompts_per_round,
            n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, stop=cfg.stop,
            template=cfg.template, seed=prompt_seed(cfg.seed, f"round-{k}"), extraction=cfg.extraction,
            **engine_flags(cfg))

    def train_settings(self, k: int) -> dict:
        """What each round sets of bin/train's settings: round k's data and policy, its share of the steps, one
        schedule over the run, the optimizer state of round k-1 (--init-from), and how to pick up after a kill."""
        cfg, steps = self.cfg, self.cfg.steps // self.cfg.rounds
        trained = self.out / f"round-{k}" / "train"
        j = self.last_trained(k)  # whose optimizer state and schedule position this round continues
        last = self.out / f"round-{j}" / "train" if j is not None else None
        last_step = json.loads((last / "train_summary.json").read_text())["last_step"] if last is not None else 0
        settings = dict(
            data=str(self.out / f"round-{k}" / "data"), out=str(trained), model=self.policy(k), steps=steps,
            batch_size=cfg.batch_size, whole_batches=cfg.round_batches, lr=cfg.lr, warmup_ratio=cfg.warmup_ratio, seed=cfg.seed, save_every=steps,
            log_every=1, report_to=cfg.report_to, schedule_steps=steps if cfg.restart_schedule else cfg.steps,
            init_from=str(last / "checkpoints" / f"step-{last_step}") if last is not None else None,
            restart_schedule=cfg.restart_schedule and last is not None, resume=False, force=False)
        if latest_checkpoint(trained / "checkpoints") is not None:  # killed while saving the final model
            settings["resume"] = True
        elif trained.exists():  # killed mid-round: start the round's training over from the last round's state
            settings["force"] = True
        return settings

    def eval_config(self, k: int, model: Path, where: Path) -> evaluate.EvalConfig:
        cfg = self.cfg
        return evaluate.EvalConfig(
            model=str(model), name=f"round-{k}", benchmarks=cfg.benchmarks, k=cfg.k, temperature=cfg.temperature,
            top_p=cfg.top_p, max_tokens=cfg.max_tokens, seed=cfg.seed, extraction=cfg.extraction, out=str(where),
            force=True, problems=cfg.problems, template=cfg.template, **engine_flags(cfg))  # stop: the template's

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
        swaps = [r["engine_ms"] for r in records[1:] if r["engine_ms"] is not None]
        summary = {
            "learner": cfg.learner, "rounds": cfg.rounds, "steps": sum(r["last_step"] - r["first_step"] for r in records),
            "skipped_rounds": [r["round"] for r in records if "skipped" in r],
            "final_model": str(final), "responses": sum(r["responses"] for r in records),
            "sampled_tokens": sum(r["sampled_tokens"] for r in records),
            "collect_seconds": round(sum(r["collect_seconds"] or 0 for r in records), 2),
            "train_seconds": round(sum(r["train_seconds"] for r in records), 2),
            "eval_seconds": round(sum(r.get("eval_seconds") or 0 for r in records), 2),
            "seconds": round(sum((r["collect_seconds"] or 0) + r["train_seconds"] for r in records), 2),
            "engine": "restarted each round" if cfg.restart_engine else "live, weights loaded in place",
            "engine_ms_per_round": round(sum(swaps) / len(swaps), 1) if swaps else None,
            "wall_seconds_this_run": round(seconds, 2),
        }
        write_json(out / "iterate_summary.json", summary)  # last: its presence marks a finished run
        print(f"{cfg.rounds} rounds of {cfg.learner}: {summary['responses']} responses sampled "
              f"({summary['sampled_tokens']} tokens), {summary['steps']} steps; collect {summary['collect_seconds']:.0f} s, "
              f"train {summary['train_seconds']:.0f} s; engine per round {summary['engine_ms_per_round']} ms "
              f"({summary['engine']}) -> {out}")
        return summary


def engine_flags(cfg: EngineFlags) -> dict:
    """The engine's settings of ``cfg``, for a stage's config."""
    return {f.name: getattr(cfg, f.name) for f in fields(EngineFlags)}


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
        "first_step": summary["first_step"], "last_step": summary["last_step"], "steps": steps,
    }
