"""``bin/compare``: several learners × seeds on one offline dataset under one budget, one report.

Every learner trains from the same initial model on the same dataset for the same number of optimizer steps,
batch size and learning-rate schedule (a learner's recipe may scale its rate: ``lr_scale`` in its learner's record; a run's own
flags come from ``--runs``), then each model — the base model included — is evaluated with the same sampling
on the same benchmarks, with the run's seed (``--temperature``, ``--top-p``, ``--max-tokens``: the evaluation's
sampling; the dataset is collected with bin/collect's defaults, or given with ``--data``). Each stage calls a command's function in this process (its
equivalent command line first in its log, ``OUT/logs/``; its files where the command writes them); one engine
samples every collection and evaluation, taking each checkpoint's weights in place. Finished stages are skipped
when the command is run again, an interrupted training resumes from its last checkpoint.

Writes ``OUT/report.md`` (mean ± std over seeds, best per column in bold), ``OUT/results.csv`` (one row per
model, seed and benchmark) and ``OUT/plots/``.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from dataclasses import asdict, fields, replace
from pathlib import Path

from tqdm.auto import tqdm

from offline_rl.embedded import world
from offline_rl.embedded.base_model import DEFAULT_BASE_MODEL
from offline_rl.evaluate import EvalConfig, run_eval
from offline_rl.experiments.iterate import engine_flags, resolve, run_iterate
from offline_rl.experiments.plan import DATASET_MODEL, CompareConfig, Stage, plan
from offline_rl.experiments.report import write_report
from offline_rl.experiments.validate import check_comparison
from offline_rl.train import run_train
from rollout.collect import run_collect
from rollout.dataset import read_manifest, write_json
from rollout.demonstrations import run_import
from rollout.engines import LiveEngine
from rollout.files import BadInput, held_directories, hold_directory, release, release_unused
from rollout.models import resolve_model
from rollout.runtime import (
    CommandFailed,
    UsageError,
    check_rerun_settings,
    command_line,
    output_to,
    parse_config,
    print_config,
    save_config,
)

OPTIONAL_RUN_KEYS = ("sweep", "swept", "n", "batch_size")  # recorded only when set: older comparisons rerun as they were


class StageFailed(RuntimeError):
    """A stage's command failed."""


def main(argv: list[str] | None = None) -> dict:
    return run_compare(parse_config(CompareConfig, argv, "compare", __doc__))


def run_compare(cfg: CompareConfig) -> dict:
    """``bin/compare``: every stage's input checked, then the stages in order, then the report."""
    checked = check_comparison(cfg)  # before anything is written or started
    cfg, runs, seeds, out, data, demonstrations = (checked.cfg, checked.runs, checked.seeds, checked.out, checked.data,
                                                   checked.demonstrations)
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("out", "learners", "runs", "seeds", "force", "report_to")
                and not (k in ("sweep", "select_on") and cfg.sweep is None and not any(r.sweep for r in runs))}
    planned = {"runs": [{k: v for k, v in asdict(r).items() if v is not None or k not in OPTIONAL_RUN_KEYS}
                        | {"flags": dict(r.flags)} for r in runs]}  # what --learners or --runs said
    hold_directory(out, "compare", force=cfg.force, owned=lambda d: (d / "compare_config.json").is_file())
    check_rerun_settings(out / "compare_config.json", settings, out, cfg.force)
    check_rerun_settings(out / "compare_runs.json", planned, out, cfg.force)
    print_config(cfg, out=out)
    save_config(cfg, out / "compare_config.json")
    write_json(out / "compare_runs.json", planned)

    failures = run_stages(plan(cfg, out, data, runs, seeds, demonstrations), out, data, EvalConfig(**engine_flags(cfg)))
    summary = write_report(out, cfg, runs, seeds, data, demonstrations)
    print(summary["table"])
    print(f"\nreport: {out / 'report.md'}, {out / 'results.csv'}, plots in {out / 'plots'}")
    if failures:
        raise CommandFailed(f"{len(failures)} stage(s) failed, the report holds the rest: {failures[0]}")
    return summary


def run_stages(stages: list[Stage], out: Path, data: Path, engine: EvalConfig) -> list[str]:
    """The unfinished stages in order, with one live engine; a failed training skips its evaluation, a failed
    collection stops the comparison. Returns the failures."""
    todo = [s for s in stages if not s.finished()]
    failures: list[str] = []
    live = LiveEngine(engine)  # the engine's own seed draws nothing: every request has its own
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
    return failures


def with_dataset_model(config, dataset_model: str | None):
    """``config`` with the dataset's model wherever the plan could only name it."""
    found = {f.name: dataset_model for f in fields(config) if getattr(config, f.name) == DATASET_MODEL}
    return replace(config, **found) if found else config


def call(stage: Stage, configs: tuple, live: LiveEngine) -> None:
    """The stage's command function on its configs; collections and evaluations sample with the live engine."""
    if stage.command == "collect":
        run_collect(configs[0], world=world.load_split, default_model=str(DEFAULT_BASE_MODEL), engine=live.engine)
    elif stage.command == "import":
        run_import(configs[0], world=world.load_split, default_model=str(DEFAULT_BASE_MODEL))
    elif stage.command == "eval":
        run_eval(configs[0], default_model=str(DEFAULT_BASE_MODEL), engine=live.engine)
    elif stage.command == "iterate":  # its rounds sample with the live engine too
        rounds, train, learner = configs
        run_iterate(resolve(rounds, stage.given), train, learner, engine=live)
    else:
        run_train(*configs)


def run_stage(stage: Stage, logs: Path, dataset_model: str | None, live: LiveEngine) -> dict:
    """Run ``stage``'s command function in this process, its output into its log (first line: the equivalent
    command line, to run it by hand); collections and evaluations sample with ``live``, which loads the stage's
    model in place. Returns the stage's record (seconds, engine milliseconds); raises :class:`StageFailed`."""
    configs = tuple(with_dataset_model(c, dataset_model) for c in stage.configs)
    if stage.command == "train" and any((Path(configs[0].out) / "checkpoints").glob("step-*")):
        configs = (replace(configs[0], resume=True), *configs[1:])
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / (stage.name.replace(" ", "-") + ".log")
    record = {"stage": stage.name, "command": stage.command, "engine_ms": None}
    start, error, holding = time.time(), None, held_directories()  # compare's own OUT, held throughout
    with log.open("w") as f, output_to(f):
        print(command_line(stage.command, *configs), flush=True)
        try:
            if stage.samples is not None:
                model = dataset_model if stage.samples == DATASET_MODEL else stage.samples
                record["engine_ms"] = live.hold(resolve_model(model))
                record["engine"] = live.last
            elif stage.command != "iterate":
                live.make_room()  # training beside the engine: an accelerator's memory goes to the training
            call(stage, configs, live)
        except (UsageError, BadInput, CommandFailed) as e:
            error = str(e)
        except Exception as e:  # a bug in the stage: its traceback in the log, the rest of the comparison goes on
            traceback.print_exc()
            error = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
        if error is not None:
            print(f"{stage.command}: error: {error}", flush=True)
    if error is not None:
        release_unused(keep=holding)  # and output directories the stage created but never wrote into are removed
        raise StageFailed(f"{stage.name} failed: {error} [log: {log}]")
    release(keep=holding)  # the stage's directories, as its own process's end would
    record["seconds"] = round(time.time() - start, 2)
    record["engine_starts"], record["engine_loads"] = live.starts, live.loads  # so far in this run
    return record
