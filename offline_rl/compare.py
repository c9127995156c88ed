"""``bin/compare``: several learners × seeds on one offline dataset under one budget, one report.

Every learner trains from the same initial model on the same dataset for the same
number of optimizer steps, batch size and learning-rate schedule (a learner's
recipe may change its own hyper-parameters: see ``RECIPES`` and ``--learner-args``),
then each model — the base model included — is evaluated with the same sampling on
the same benchmarks, with the run's seed. Each stage is a ``bin/`` command run in this
process (its equivalent command line and its output in ``OUT/logs/``, its files where the
command writes them); one engine samples every collection and evaluation, taking each
checkpoint's weights in place. Finished stages are skipped when the command is run again,
an interrupted training resumes from its last checkpoint.

Writes ``OUT/report.md`` (mean ± std over seeds, best per column in bold),
``OUT/results.csv`` (one row per model, seed and benchmark) and ``OUT/plots/``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import re
import shlex
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from offline_rl import world
from offline_rl.evaluate import EvalConfig, load_benchmark, pass_ks
from offline_rl.learners import LEARNERS
from rewards.files import BadInput, held_directories, hold_directory, release, release_unused
from rollout.cli import CommandFailed, UsageError, check_rerun_settings, parse_config, print_config, save_config
from rollout.collect import LiveEngine, resolve_model
from rollout.dataset import atomic_write_bytes, is_complete, read_manifest

ROOT = Path(__file__).resolve().parents[1]

# A learner's own recipe under the shared budget: flags added to its bin/train command.
# DPO's loss is per pair of whole sequences, and at the SFT-style rate (2e-4) it drove the
# embedded model to 16 % test-id avg@4 from 28 % (over-optimisation); DPO recipes use a rate
# an order of magnitude or more below SFT's (Rafailov et al. 2023; Tunstall et al. 2023).
RECIPES = {"dpo": ["--lr-scale", "0.1"]}


@dataclass
class CompareConfig:
    out: str = field(default=None, metadata={"help": "comparison directory (required); run again to resume"})
    data: str = field(default=None, metadata={"help": "offline dataset from bin/collect (default: collect one into OUT/data with bin/collect's defaults)"})
    model: str = field(default=None, metadata={"help": "initial model of every learner (default: the dataset's model)"})
    collect_limit: int = field(default=None, metadata={"help": "when collecting: use at most N prompts of the source", "min": 1})
    learners: str = field(default="sft,rft,dft,dpo,ppo,iwsft,adft", metadata={"help": f"comma-separated learners ({', '.join(LEARNERS)}); NAME=LEARNER adds a named variant, its flags in --learner-args (e.g. dft_seq=dft)"})
    rounds: str = field(default=None, metadata={"help": "NAME:R,...: these learners train in R rounds with bin/iterate, each collecting from its own current policy, at the same budget: R rounds of budget/R steps on 1/R of the dataset's prompts each, sampled as the dataset was (e.g. rft_x4:4,grpo:150 for online GRPO)"})
    demonstrations: str = field(default="world", metadata={"help": "demonstrations for --demonstration-learners: world (the world's reference solutions of --data's prompts, when they come from the world), a bin/import dataset directory, or none"})
    demonstration_learners: str = field(default="sft", metadata={"help": "comma-separated learner names trained on the demonstrations instead of --data"})
    seeds: str = field(default="0,1,2", metadata={"help": "comma-separated seeds (training and evaluation sampling)"})
    benchmarks: str = field(default=",".join(world.TEST_SPLITS), metadata={"help": "benchmarks, as bin/eval takes them (default: every world test split)"})
    data_dir: str = field(default=None, metadata={"help": "folder of the short-named benchmarks' files (bin/eval --data-dir)"})
    budget_steps: int = field(default=150, metadata={"help": "optimizer steps per learner (the shared budget)", "min": 1})
    batch_size: int = field(default=32, metadata={"help": "sequences (DPO: pairs) per optimizer step", "min": 1})
    lr: float = field(default=2e-4, metadata={"help": "peak learning rate (warm-up + cosine), scaled by a learner's recipe", "above": 0})
    learner_args: str = field(default=None, metadata={"help": "extra bin/train flags per learner, e.g. 'dpo: --beta 0.2; ppo: --clip-eps 0.1' (replace the recipe)"})
    k: int = field(default=4, metadata={"help": "samples per problem in evaluation", "min": 1})
    temperature: float = field(default=1.0, metadata={"help": "evaluation sampling temperature", "min": 0})
    max_tokens: int = field(default=160, metadata={"help": "most tokens per evaluation response", "min": 1})
    eval_limit: int = field(default=None, metadata={"help": "evaluate only the first N problems of each benchmark", "min": 1})
    backend: str = field(default="vllm", metadata={"help": "generation engine for collection and evaluation", "choices": ["vllm", "hf"]})
    report_to: str = field(default="tensorboard", metadata={"help": "trackers of every training, as bin/train takes them: tensorboard, wandb, trackio, none"})
    force: bool = field(default=False, metadata={"help": "reuse an OUT made with different settings, or one bin/compare did not make"})


class StageFailed(RuntimeError):
    """A stage's command exited non-zero."""


DATASET_MODEL = "{dataset model}"  # in a planned command: the dataset's model, known once it is collected


@dataclass
class Stage:
    name: str
    command: list[str]
    done: Path  # the stage's completion mark, written last by its command
    resume: Path | None = None  # a checkpoint folder: when it holds one, add --resume
    samples: str | None = None  # the model a collection or evaluation samples from (the live engine loads it)

    def finished(self) -> bool:
        """A dataset is finished when its manifest says so (collect writes the manifest first); the
        other stages when their mark exists."""
        if self.done.name == "manifest.json":
            return is_complete(self.done.parent)
        return self.done.exists()


def parse_learners(spec: str) -> dict[str, str]:
    """'sft,dft,dft_seq=dft' -> {"sft": "sft", "dft": "dft", "dft_seq": "dft"}: each run's name and its learner."""
    named = {}
    for part in spec.split(","):
        name, _, learner = part.strip().partition("=")
        if not name:
            continue
        learner = learner.strip() or name
        if learner not in LEARNERS or not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name == "base" or name in named:
            raise UsageError(f"--learners: {part.strip()!r} is not a known learner, or NAME=LEARNER with a new name; "
                             f"known: {', '.join(LEARNERS)}")
        named[name] = learner
    if not named:
        raise UsageError("--learners: need at least one learner")
    return named


def parse_learner_args(spec: str | None, names: set[str] | None = None) -> dict[str, list[str]]:
    """'dpo: --beta 0.2; ppo: --clip-eps 0.1' -> {"dpo": [...], "ppo": [...]}; a learner named here loses its recipe."""
    names = set(LEARNERS) | (names or set())
    args = {name: list(flags) for name, flags in RECIPES.items()}
    for part in (spec or "").split(";"):
        if not part.strip():
            continue
        name, sep, flags = part.partition(":")
        name = name.strip()
        if not sep or name not in names:
            raise UsageError(f"--learner-args: expected 'LEARNER: FLAGS; ...' with a known learner, got {part.strip()!r}")
        args[name] = shlex.split(flags)
    return args


def parse_rounds(spec: str | None, learners: dict[str, str], budget_steps: int) -> dict[str, int]:
    """'rft_x4:4,grpo:150' -> {"rft_x4": 4, "grpo": 150}: who trains in rounds, and in how many."""
    rounds = {}
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        name, _, count = part.strip().partition(":")
        if name not in learners or not count.isdigit() or int(count) < 1:
            raise UsageError(f"--rounds: expected NAME:ROUNDS with a learner of --learners, got {part.strip()!r}")
        if budget_steps % int(count):
            raise UsageError(f"--rounds {part.strip()}: {budget_steps} budget steps do not split into {count} rounds")
        rounds[name] = int(count)
    return rounds


def train_flags(learner: str, cfg: CompareConfig, extra: dict[str, list[str]]) -> list[str]:
    flags = list(extra.get(learner, []))
    lr = cfg.lr
    if "--lr-scale" in flags:  # a recipe's rate relative to the shared one
        i = flags.index("--lr-scale")
        lr = cfg.lr * float(flags[i + 1])
        del flags[i : i + 2]
    return ["--lr", f"{lr:g}", *flags]


def plan(cfg: CompareConfig, out: Path, data: Path, learners: dict[str, str], seeds: list[int],
         demonstrations: Path | None = None) -> list[Stage]:
    bins = lambda name: [sys.executable, str(ROOT / "bin" / name)]  # noqa: E731
    extra = parse_learner_args(cfg.learner_args, set(learners))
    on_demonstrations = {n.strip() for n in cfg.demonstration_learners.split(",")} if demonstrations else set()
    rounds = parse_rounds(cfg.rounds, learners, cfg.budget_steps)
    model = ["--model", cfg.model] if cfg.model else []
    stages = []
    collect = Stage("collect", [], data / "manifest.json")
    if not collect.finished():
        limit = ["--limit", str(cfg.collect_limit)] if cfg.collect_limit else []
        collect.command = [*bins("collect"), "--out", str(data), "--backend", cfg.backend, *model, *limit]
        from offline_rl.base_model import DEFAULT_BASE_MODEL

        collect.samples = cfg.model or str(DEFAULT_BASE_MODEL)
        stages.append(collect)
    if demonstrations is not None and demonstrations == out / "demonstrations":  # the world's, imported here
        imported = Stage("import", [], demonstrations / "manifest.json")
        if not imported.finished():
            limit = ["--limit", str(cfg.collect_limit)] if cfg.collect_limit else []
            imported.command = [*bins("import"), "--source", "world:train", "--out", str(demonstrations),
                                "--model", cfg.model or DATASET_MODEL, *limit]
            stages.append(imported)
    evaluation = ["--benchmarks", cfg.benchmarks, "--k", str(cfg.k), "--temperature", str(cfg.temperature),
                  "--max-tokens", str(cfg.max_tokens), "--backend", cfg.backend,
                  *(["--limit", str(cfg.eval_limit)] if cfg.eval_limit else []),
                  *(["--data-dir", cfg.data_dir] if cfg.data_dir else [])]
    for seed in seeds:
        base_model = cfg.model or DATASET_MODEL
        stages.append(Stage(f"eval base s{seed}", [*bins("eval"), "--model", base_model, "--name", "base", "--seed",
                                                   str(seed), *evaluation, "--out", str(out / "evals" / f"base-s{seed}")],
                            out / "evals" / f"base-s{seed}" / "results.json", samples=base_model))
        for learner, module in learners.items():
            run = out / "runs" / f"{learner}-s{seed}"
            source = demonstrations if learner in on_demonstrations else data
            if learner in rounds:  # collects its own samples: the dataset's prompts and sampling, split into rounds
                lr, *flags = train_flags(learner, cfg, extra)[1:]
                stages.append(Stage(f"train {learner} s{seed}", [
                    *bins("iterate"), "--learner", module, "--like", str(data), *model, "--out", str(run),
                    "--rounds", str(rounds[learner]), "--steps-per-round", str(cfg.budget_steps // rounds[learner]),
                    "--batch-size", str(cfg.batch_size), "--seed", str(seed), "--lr", lr, "--backend", cfg.backend,
                    "--report-to", cfg.report_to,
                    *(["--train-args", shlex.join(flags)] if flags else [])], run / "iterate_summary.json"))
            else:
                stages.append(Stage(f"train {learner} s{seed}", [
                    *bins("train"), "--learner", module, "--data", str(source), *model, "--out", str(run),
                    "--max-steps", str(cfg.budget_steps), "--batch-size", str(cfg.batch_size), "--seed", str(seed),
                    "--save-every", str(max(1, cfg.budget_steps // 3)), "--log-every", "5", "--report-to", cfg.report_to,
                    *train_flags(learner, cfg, extra)], run / "train_summary.json", resume=run / "checkpoints"))
            stages.append(Stage(f"eval {learner} s{seed}", [
                *bins("eval"), "--model", str(run), "--name", learner, "--seed", str(seed), *evaluation,
                "--out", str(out / "evals" / f"{learner}-s{seed}")], out / "evals" / f"{learner}-s{seed}" / "results.json",
                samples=str(run)))
    return stages


def demonstrations_for(cfg: CompareConfig, out: Path, data: Path, learners: dict[str, str]) -> Path | None:
    """Where --demonstration-learners train: a given bin/import dataset, the world's reference solutions
    imported into OUT/demonstrations (when --data's prompts are the world's), or nowhere (they use --data)."""
    wanted = {n.strip() for n in cfg.demonstration_learners.split(",") if n.strip()} & set(learners)
    if not wanted or cfg.demonstrations == "none":
        return None
    if cfg.demonstrations != "world":
        path = Path(cfg.demonstrations)
        if read_manifest(path).get("kind") != "demonstrations":
            raise UsageError(f"--demonstrations {path} is not a bin/import dataset")
        return path
    source = read_manifest(data).get("source", {}) if (data / "manifest.json").exists() else {"kind": "world"}
    if source.get("kind") != "world" or source.get("split", "train") != "train":
        return None  # no reference solutions for these prompts: they train on --data's accepted view
    return out / "demonstrations"


def run_stage(stage: Stage, logs: Path, dataset_model: str | None, live: LiveEngine) -> dict:
    """Run ``stage``'s command in this process, its output into its log (first line: the equivalent command line,
    to run it by hand); collections and evaluations sample with ``live``, which loads the stage's model in place.
    Returns the stage's record (seconds, engine milliseconds); raises :class:`StageFailed` with one line."""
    from offline_rl.cli import COMMANDS

    command = [dataset_model if c == DATASET_MODEL else c for c in stage.command]
    if stage.resume is not None and any(stage.resume.glob("step-*")):
        command.append("--resume")
    name, argv = Path(command[1]).name, command[2:]
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / (stage.name.replace(" ", "-") + ".log")
    record = {"stage": stage.name, "command": name, "engine_ms": None}
    start, error, holding = time.time(), None, held_directories()  # compare's own OUT, held throughout
    with log.open("w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        print(shlex.join(command), flush=True)
        try:
            kwargs = {}
            if stage.samples is not None:
                model = dataset_model if stage.samples == DATASET_MODEL else stage.samples
                record["engine_ms"] = live.hold(resolve_model(model))
                record["engine"] = live.last
                kwargs["engine"] = live.engine
            elif name == "iterate":  # its rounds sample with the live engine too
                kwargs["engine"] = live
            else:
                live.make_room()  # training beside the engine: an accelerator's memory goes to the training
            COMMANDS[name][1]()(argv, **kwargs)
        except (UsageError, BadInput, CommandFailed) as e:
            error = str(e)
        except SystemExit as e:  # an argument parser's exit
            error = None if e.code in (0, None) else f"exit {e.code}"
        except Exception as e:  # a bug in the stage: its traceback in the log, the rest of the comparison goes on
            traceback.print_exc()
            error = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
        if error is not None:
            print(f"{name}: error: {error}", flush=True)
    if error is not None:
        release_unused(keep=holding)  # and output directories the stage created but never wrote into are removed
        raise StageFailed(f"{stage.name} failed: {error} [log: {log}]")
    release(keep=holding)  # the stage's directories, as its own process's end would
    record["seconds"] = round(time.time() - start, 2)
    record["engine_starts"], record["engine_loads"] = live.starts, live.loads  # so far in this run
    return record


def main(argv: list[str] | None) -> dict:
    cfg = parse_config(CompareConfig, argv, "compare", __doc__)
    if cfg.out is None:
        raise UsageError("--out is required")
    learners = parse_learners(cfg.learners)
    try:
        seeds = [int(s) for s in cfg.seeds.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--seeds must be comma-separated integers (got {cfg.seeds!r})") from None
    if not seeds:
        raise UsageError("--seeds: need at least one seed")
    for name in cfg.benchmarks.split(","):  # bad benchmarks fail now, not after an hour of training
        if name.strip():
            load_benchmark(name.strip(), EvalConfig(data_dir=cfg.data_dir))
    parse_learner_args(cfg.learner_args, set(learners))
    parse_rounds(cfg.rounds, learners, cfg.budget_steps)
    out = Path(cfg.out)
    data = Path(cfg.data) if cfg.data else out / "data"
    demonstrations = demonstrations_for(cfg, out, data, learners)
    if cfg.data and not (data / "manifest.json").is_file():
        raise UsageError(f"{data} is not an offline dataset (no manifest.json); omit --data to collect one")
    if cfg.data and read_manifest(data).get("complete") is not True:
        raise UsageError(f"{data} is an unfinished collection (complete: false); run its bin/collect again to finish it")
    if cfg.model:
        resolve_model(cfg.model)

    settings = {k: v for k, v in asdict(cfg).items() if k not in ("out", "learners", "seeds", "force", "report_to")}
    saved = out / "compare_config.json"
    hold_directory(out, "compare", force=cfg.force, owned=lambda d: (d / "compare_config.json").is_file())
    check_rerun_settings(saved, settings, out, cfg.force)
    print_config(cfg)
    save_config(cfg, saved)

    stages = plan(cfg, out, data, learners, seeds, demonstrations)
    todo = [s for s in stages if not s.finished()]
    failures: list[str] = []
    live = LiveEngine(EvalConfig(backend=cfg.backend))  # the engine's own seed draws nothing: every request has its own
    bar = tqdm(total=len(stages), initial=len(stages) - len(todo), desc="compare", unit="stage")
    start = time.time()
    try:
        for stage in todo:
            bar.set_postfix_str(stage.name)
            trained = stage.name.replace("eval ", "train ", 1)
            if stage.name.startswith("eval ") and any(f.startswith(trained + " ") for f in failures):
                bar.update(1)  # nothing to evaluate
                continue
            dataset_model = read_manifest(data)["model"] if (data / "manifest.json").exists() else None
            try:
                record = run_stage(stage, out / "logs", dataset_model, live)
            except StageFailed as e:
                if stage.name == "collect":
                    raise CommandFailed(str(e)) from None
                failures.append(str(e))
                tqdm.write(str(e), file=sys.stderr)
            else:
                with (out / "stages.jsonl").open("a") as f:  # what each stage took, for the report's time table
                    f.write(json.dumps({**record, "run_started": round(start)}) + "\n")
                engine = "" if record["engine_ms"] is None else f" (engine {record['engine_ms'] / 1000:.1f} s)"
                tqdm.write(f"{stage.name}: {record['seconds']:.0f} s{engine}", file=sys.stderr)
            bar.update(1)
    finally:
        live.close()
        bar.close()

    summary = write_report(out, cfg, ["base", *learners], seeds, data, demonstrations)
    print(summary["table"])
    print(f"\nreport: {out / 'report.md'}, {out / 'results.csv'}, plots in {out / 'plots'}")
    if failures:
        raise CommandFailed(f"{len(failures)} stage(s) failed, the report holds the rest: {failures[0]}")
    return summary


# ---------------------------------------------------------------- the report

def collect_results(out: Path, models: list[str], seeds: list[int]) -> list[dict]:
    """One row per model, seed and benchmark, from the evaluations present."""
    rows = []
    for model in models:
        for seed in seeds:
            path = out / "evals" / f"{model}-s{seed}" / "results.json"
            if not path.exists():
                continue
            res = json.loads(path.read_text())
            run = out / "runs" / f"{model}-s{seed}"
            train, iterated = run / "train_summary.json", run / "iterate_summary.json"
            train_seconds = json.loads(train.read_text())["seconds"] if train.exists() else None
            if iterated.exists():  # rounds: their training, and the sampling they did themselves
                train_seconds = json.loads(iterated.read_text())["train_seconds"]
            for bench, metrics in res["benchmarks"].items():
                rows.append({"model": model, "seed": seed, "benchmark": bench, "train_seconds": train_seconds,
                             **{k: v for k, v in metrics.items() if isinstance(v, int | float)}})
    return rows


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def format_report_table(rows: list[dict], models: list[str], benchmarks: list[str], metric: str) -> str:
    """mean ± std (percent) per model and benchmark; the best mean of each column in bold."""
    cell: dict[tuple[str, str], tuple[float, float, int]] = {}
    for model in models:
        for bench in benchmarks:
            values = [100 * r[metric] for r in rows if r["model"] == model and r["benchmark"] == bench and metric in r]
            if values:
                cell[model, bench] = (*mean_std(values), len(values))
    best = {b: max((round(cell[m, b][0], 1) for m in models if (m, b) in cell), default=None) for b in benchmarks}
    lines = ["| model | " + " | ".join(f"{b} {metric}" for b in benchmarks) + " | seeds |",
             "|---|" + "---:|" * len(benchmarks) + "---:|"]
    for model in models:
        cells, n = [], 0
        for bench in benchmarks:
            if (model, bench) not in cell:
                cells.append("–")
                continue
            mean, std, count = cell[model, bench]
            n = max(n, count)
            text = f"{mean:.1f} ± {std:.1f}"
            cells.append(f"**{text}**" if round(mean, 1) == best[bench] else text)  # ties as shown: all bold
        lines.append(f"| {model} | " + " | ".join(cells) + f" | {n} |")
    return "\n".join(lines)


def transfer_table(rows: list[dict], models: list[str], benchmarks: list[str], metric: str) -> str:
    """Each learner's gain over the base model (points of ``metric``, mean over seeds) per benchmark, marked *
    where it exceeds two pooled seed stds (sqrt of the mean of the two variances): a gain beyond seed noise."""
    stats = {}
    for model in models:
        for bench in benchmarks:
            values = [100 * r[metric] for r in rows if r["model"] == model and r["benchmark"] == bench and metric in r]
            if values:
                stats[model, bench] = mean_std(values)
    lines = ["| model | " + " | ".join(benchmarks) + " |", "|---|" + "---:|" * len(benchmarks)]
    for model in [m for m in models if m != "base"]:
        cells = []
        for bench in benchmarks:
            if (model, bench) not in stats or ("base", bench) not in stats:
                cells.append("–")
                continue
            (mean, std), (base_mean, base_std) = stats[model, bench], stats["base", bench]
            gain, pooled = mean - base_mean, ((std ** 2 + base_std ** 2) / 2) ** 0.5
            cells.append(f"{gain:+.1f}" + (" *" if abs(gain) > 2 * pooled and pooled > 0 else ""))
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def budget_table(out: Path, models: list[str], seeds: list[int], manifest: dict, on_demonstrations: set[str],
                 rounds: dict[str, int]) -> str:
    """What each learner sampled and spent: responses and tokens sampled (the offline learners share the one
    dataset, collected once), and the mean over seeds of the time collecting and training (inside the commands)."""
    counts, summary = manifest.get("counts", {}), manifest.get("summary", {})
    data_tokens = round(summary.get("mean_response_tokens", 0) * counts.get("responses", 0))
    lines = ["| model | trained on | responses sampled | tokens sampled | collect (s) | train (s) |",
             "|---|---|---:|---:|---:|---:|"]
    for model in [m for m in models if m != "base"]:
        runs = [out / "runs" / f"{model}-s{seed}" for seed in seeds]
        if model in rounds:
            done = [json.loads((r / "iterate_summary.json").read_text()) for r in runs if (r / "iterate_summary.json").exists()]
            if not done:
                continue
            mean = {key: statistics.fmean(d[key] for d in done)
                    for key in ("responses", "sampled_tokens", "collect_seconds", "train_seconds")}
            lines.append(f"| {model} | {rounds[model]} rounds of its own samples | {mean['responses']:.0f} | "
                         f"{mean['sampled_tokens']:.0f} | {mean['collect_seconds']:.0f} | {mean['train_seconds']:.0f} |")
            continue
        done = [json.loads((r / "train_summary.json").read_text()) for r in runs if (r / "train_summary.json").exists()]
        if not done:
            continue
        what = "demonstrations" if model in on_demonstrations else "the dataset (offline)"
        sampled = ("–", "–", "–") if model in on_demonstrations else (
            counts.get("responses", "?"), data_tokens, f"{manifest.get('wall_seconds', 0):.0f} (shared)")
        lines.append(f"| {model} | {what} | {sampled[0]} | {sampled[1]} | {sampled[2]} | "
                     f"{statistics.fmean(d['seconds'] for d in done):.0f} |")
    return "\n".join(lines)


def stage_times_table(out: Path) -> str:
    """Per kind of stage (collect, train, eval, ...): how many ran, their wall time in all and on average, and the
    part the live engine took to start or to load a checkpoint's weights (``OUT/stages.jsonl``, each stage's last run)."""
    path = out / "stages.jsonl"
    if not path.exists():
        return ""
    last = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            last[record["stage"]] = record
    kinds: dict[str, list[dict]] = {}
    for record in last.values():
        kinds.setdefault(record["command"], []).append(record)
    lines = ["| stage | runs | total (min) | mean (s) | of which engine start or weight load (s) |",
             "|---|---:|---:|---:|---:|"]
    for kind, records in kinds.items():
        seconds = sum(r["seconds"] for r in records)
        engine = sum(r["engine_ms"] or 0 for r in records) / 1000
        lines.append(f"| {kind} | {len(records)} | {seconds / 60:.1f} | {seconds / len(records):.1f} | {engine:.1f} |")
    total = sum(r["seconds"] for r in last.values())
    lines.append(f"| all | {len(last)} | {total / 60:.1f} | {total / max(1, len(last)):.1f} | "
                 f"{sum(r['engine_ms'] or 0 for r in last.values()) / 1000:.1f} |")
    return "\n".join(lines)


def write_report(out: Path, cfg: CompareConfig, models: list[str], seeds: list[int], data: Path,
                 demonstrations: Path | None = None) -> dict:
    rows = collect_results(out, models, seeds)
    benchmarks = list(dict.fromkeys(r["benchmark"] for r in rows))
    k = cfg.k
    columns = ["model", "seed", "benchmark", "problems", f"avg@{k}", *[f"pass@{j}" for j in pass_ks(k) if j > 1],
               f"maj@{k}", "mean_response_tokens", "truncation_rate", "prompts_too_long", "train_seconds"]
    buffer = _csv_text(rows, columns)
    atomic_write_bytes(out / "results.csv", buffer.encode())

    table = format_report_table(rows, models, benchmarks, f"avg@{k}")
    manifest = read_manifest(data) if (data / "manifest.json").exists() else {}
    counts = manifest.get("counts", {})
    recipes = parse_learner_args(cfg.learner_args, set(models))
    model = str(manifest.get("model", "?"))
    if Path(model).is_absolute() and Path(model).is_relative_to(ROOT):
        model = str(Path(model).relative_to(ROOT))  # the shipped base model, wherever the repo lives
    train_seconds = sum(r["train_seconds"] or 0 for r in rows if r["benchmark"] == benchmarks[0]) if rows else 0
    eval_seconds = sum(json.loads(p.read_text()).get("wall_seconds", 0) for p in (out / "evals").glob("*/results.json"))
    lines = [
        "# Offline RL learners compared", "",
        f"Dataset `{data}`: {counts.get('responses', '?')} responses to {counts.get('prompts', '?')} prompts "
        f"from `{model}`, pass rate {manifest.get('pass_rate', float('nan')):.3f}"
        f" (collected in {manifest.get('wall_seconds', 0) / 60:.1f} min).",
        f"Budget per learner: {cfg.budget_steps} optimizer steps of {cfg.batch_size} sequences (DPO: pairs), "
        f"AdamW, peak lr {cfg.lr:g} with 5 % warm-up and cosine decay; seeds {', '.join(map(str, seeds))} "
        f"(training order and evaluation sampling). Evaluation: k = {k} samples per problem at temperature "
        f"{cfg.temperature:g}, at most {cfg.max_tokens} tokens.",
    ]
    lines.append(f"Time: training {train_seconds / 60:.1f} min, evaluation {eval_seconds / 60:.1f} min in all "
                 "(inside the commands; see the stage times below).")
    if demonstrations is not None:
        shown = [m for m in models if m in {n.strip() for n in cfg.demonstration_learners.split(",")}]
        demo = read_manifest(demonstrations) if (demonstrations / "manifest.json").exists() else {}
        lines.append(f"Trained on demonstrations (`{demonstrations}`, {demo.get('counts', {}).get('responses', '?')} "
                     f"rows from {demo.get('source', {}).get('kind', '?')}): {', '.join(shown)}; the others on the dataset above.")
    if any(recipes.get(m) for m in models):
        lines.append("Learner recipes: " + "; ".join(f"{m} `{' '.join(recipes[m])}`" for m in models if recipes.get(m)) + ".")
    rounds = parse_rounds(cfg.rounds, {m: m for m in models}, cfg.budget_steps)
    if rounds:
        lines.append("Trained in rounds with bin/iterate, each collecting from its own current policy with the "
                     "dataset's sampling settings and prompts shared out over the rounds: "
                     + ", ".join(f"{m} ({r} rounds of {cfg.budget_steps // r} steps)" for m, r in rounds.items()) + ".")
    lines += ["", f"## avg@{k} (%; mean ± std over seeds; best per column in bold)", "", table, ""]
    if "base" in models and len(seeds) > 1:
        lines += [f"## Transfer: gain over the base model (avg@{k} points; * beyond two pooled seed stds)", "",
                  transfer_table(rows, models, benchmarks, f"avg@{k}"), ""]
    on_demonstrations = ({n.strip() for n in cfg.demonstration_learners.split(",")} if demonstrations is not None
                         else set())
    lines += ["## Budget: samples and time per learner (mean over seeds)", "",
              budget_table(out, models, seeds, manifest, on_demonstrations, rounds), ""]
    stage_table = stage_times_table(out)
    if stage_table:
        lines += ["## Stage times (wall seconds of each stage's command, this process)", "", stage_table, ""]
    for metric in [f"pass@{k}", f"maj@{k}"]:
        if k > 1:
            lines += [f"## {metric} (%)", "", format_report_table(rows, models, benchmarks, metric), ""]
    lines += ["## Plots", "", "![accuracy per benchmark](plots/accuracy.png)", "",
              "![training curves](plots/training.png)", ""]
    atomic_write_bytes(out / "report.md", "\n".join(lines).encode())
    plot_accuracy(rows, models, benchmarks, f"avg@{k}", out / "plots" / "accuracy.png")
    plot_training(out, [m for m in models if m != "base"], seeds, out / "plots" / "training.png")
    return {"table": table, "rows": rows}


def _csv_text(rows: list[dict], columns: list[str]) -> str:
    import io

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()


def _color(model: str, models: list[str]) -> str:
    """The base model gray; each learner its own color of the tab10 cycle minus its gray."""
    if model == "base":
        return "0.6"
    palette = [f"C{i}" for i in range(10) if i != 7]
    return palette[[m for m in models if m != "base"].index(model) % len(palette)]


def _save_figure(fig, path: Path) -> None:
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def plot_accuracy(rows: list[dict], models: list[str], benchmarks: list[str], metric: str, path: Path) -> None:
    """One panel per benchmark. Top: bars of mean accuracy with std error bars, each seed a dot. Bottom (with a
    base model): each learner's gain over the base, the gray band two of the base's seed stds either way,
    so that transfer along an out-of-distribution split shows at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_gain = "base" in models
    fig, axes = plt.subplots(2 if with_gain else 1, max(1, len(benchmarks)), squeeze=False,
                             figsize=(1.2 + 0.5 * len(models) * max(1, len(benchmarks)), 6.4 if with_gain else 3.6))
    for column, bench in enumerate(benchmarks):
        ax = axes[0][column]
        present = [m for m in models if any(r["model"] == m and r["benchmark"] == bench for r in rows)]
        values = {m: [100 * r[metric] for r in rows if r["model"] == m and r["benchmark"] == bench] for m in present}
        means = {m: statistics.fmean(v) for m, v in values.items()}
        stds = {m: statistics.stdev(v) if len(v) > 1 else 0.0 for m, v in values.items()}
        ax.bar(range(len(present)), [means[m] for m in present], yerr=[stds[m] for m in present], capsize=3,
               color=[_color(m, models) for m in present])
        for i, m in enumerate(present):
            ax.plot([i] * len(values[m]), values[m], "k.", markersize=3)
        ax.set_xticks(range(len(present)), present, rotation=45, ha="right")
        ax.set_title(bench)
        ax.set_ylabel(f"{metric} (%)" if column == 0 else "")
        ax.grid(axis="y", alpha=0.3)
        if not with_gain:
            continue
        ax = axes[1][column]
        learners = [m for m in present if m != "base"]
        if "base" in means:
            ax.axhspan(-2 * stds["base"], 2 * stds["base"], color="0.85")
            ax.bar(range(len(learners)), [means[m] - means["base"] for m in learners],
                   yerr=[stds[m] for m in learners], capsize=3, color=[_color(m, models) for m in learners])
        ax.axhline(0, color="0.4", linewidth=0.8)
        ax.set_xticks(range(len(learners)), learners, rotation=45, ha="right")
        ax.set_ylabel("gain over base (points)" if column == 0 else "")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save_figure(fig, path)


def _series(curves: list[list[dict]], key: str, length: int) -> list[list[float]]:
    """Per logged step, the values of ``key`` over seeds."""
    return [[c[j][key] for c in curves] for j in range(length)]


def plot_training(out: Path, learners: list[str], seeds: list[int], path: Path) -> None:
    """One panel per learner: NLL of its trained tokens (solid, left axis; mean over seeds, min-max
    shaded) and its own loss (dashed, right axis). Scales differ per learner: DPO's NLL is per chosen
    sequence, PPO's surrogate is signed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(4, max(1, len(learners)))
    rows = -(-len(learners) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows), squeeze=False)
    for ax in axes.flat[len(learners):]:
        ax.axis("off")
    for ax, learner in zip(axes.flat, learners, strict=False):
        curves = []
        for seed in seeds:
            metrics = out / "runs" / f"{learner}-s{seed}" / "metrics.jsonl"
            if metrics.exists():
                curves.append([json.loads(line) for line in metrics.read_text().splitlines() if line.strip()])
        ax.set_title(learner)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if not curves:
            continue
        length = min(map(len, curves))
        steps = [c["step"] for c in curves[0][:length]]
        color = _color(learner, ["base", *learners])
        if all("nll" in c[0] for c in curves):
            nll = _series(curves, "nll", length)
            ax.plot(steps, [statistics.fmean(v) for v in nll], color=color, label="NLL")
            ax.fill_between(steps, [min(v) for v in nll], [max(v) for v in nll], color=color, alpha=0.2)
            ax.set_ylabel("NLL", fontsize=8)
        twin = ax.twinx()
        twin.plot(steps, [statistics.fmean(v) for v in _series(curves, "loss", length)], color="k", linestyle="--", linewidth=0.8,
                  label="loss")
        twin.tick_params(labelsize=7)
        ax.tick_params(labelsize=7)
    fig.suptitle("training: NLL of trained tokens (solid, left) and the learner's loss (dashed, right)", fontsize=9)
    fig.tight_layout()
    _save_figure(fig, path)
