"""``bin/compare``: several learners × seeds on one offline dataset under one budget, one report.

Every learner trains from the same initial model on the same dataset for the same number of optimizer steps,
batch size and learning-rate schedule (a learner's recipe may scale its rate: ``lr_scale`` in its learner's record;
a run's own flags come from ``--runs``), then each model — the base model included — is evaluated with the same
sampling on the same benchmarks, with the run's seed (``--temperature``, ``--top-p``, ``--max-tokens``: the
evaluation's sampling; the dataset is collected with bin/collect's defaults, or given with ``--data``). Each stage
calls a command's function in this process (its equivalent command line first in its log, ``OUT/logs/``; its
files where the command writes them); one engine samples every collection and evaluation, taking each checkpoint's
weights in place. Finished stages are skipped when the command is run again, an interrupted training resumes
from its last checkpoint.

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

from offline_rl import embedded
from offline_rl.commands import run_function
from offline_rl.evaluate import EvalConfig
from offline_rl.experiments.plan import COMMON, DATASET_MODEL, SET_BY_STAGES, CompareConfig, Stage, plan
from offline_rl.experiments.report import rereport, write_report
from offline_rl.experiments.sweep import parse_sweep
from offline_rl.experiments.validate import check_comparison
from rollout.dataset import read_manifest, write_json
from rollout.engines import LiveEngine
from rollout.files import BadInput, held_directories, hold_directory, release, release_unused
from rollout.models import resolve_model
from rollout.runtime import (
    CommandContext,
    CommandFailed,
    UsageError,
    check_rerun_settings,
    command_line,
    output_to,
    parse_config,
    print_config,
)

# recorded only when set: older comparisons rerun as they were
OPTIONAL_RUN_KEYS = ("sweep", "swept", "n", "batch_size")


class StageFailed(RuntimeError):
    """A stage's command failed."""


def main(argv: list[str] | None = None, *, context: CommandContext | None = None) -> dict:
    given: set[str] = set()
    cfg = parse_config(CompareConfig, argv, "compare", __doc__, given=given, common=COMMON)
    ignored = sorted(given & set(SET_BY_STAGES))  # they would be ignored
    if ignored:
        raise UsageError(f"--{ignored[0]} is set by bin/compare itself for each evaluation{SET_BY_STAGES[ignored[0]]}")
    swept = parse_sweep(cfg.sweep)
    if swept is not None and swept[0] in given:  # the sweep's values would replace it for every run
        flag = "--" + swept[0].replace("_", "-")
        raise UsageError(f"{flag} is swept by --sweep {cfg.sweep}: drop {flag} (or the sweep)")
    return run_compare(cfg, context=context)


def run_compare(cfg: CompareConfig, *, context: CommandContext | None = None) -> dict:
    """``bin/compare``: every stage's input checked, then the stages in order, then the report. From the ``context``
    (default: the embedded one): the world and the default model, which every stage is given."""
    context = context or embedded.context()
    if cfg.report_only:
        return report_only(cfg)
    checked = check_comparison(cfg)  # before anything is written or started
    cfg, runs, seeds, out, data, demonstrations = (checked.cfg, checked.runs, checked.seeds, checked.out, checked.data,
                                                   checked.demonstrations)
    recorded = settings(cfg)
    unswept = cfg.sweep is None and not any(r.sweep for r in runs)
    compared = {k: v for k, v in recorded.items() if k not in (
                    "out", "learners", "runs", "seeds", "force", "report_to", "reference", "report_only")
                and not (k in ("sweep", "select_on") and unswept)}
    planned = {"runs": [{k: v for k, v in asdict(r).items() if v is not None or k not in OPTIONAL_RUN_KEYS}
                        | {"flags": dict(r.flags)} for r in runs]}  # what --learners or --runs said
    hold_directory(out, "compare", force=cfg.force, owned=lambda d: (d / "compare_config.json").is_file())
    check_rerun_settings(out / "compare_config.json", compared, out, cfg.force, defaults=settings(CompareConfig()))
    check_rerun_settings(out / "compare_runs.json", planned, out, cfg.force)
    print_config(recorded, out=out)
    write_json(out / "compare_config.json", recorded)
    write_json(out / "compare_runs.json", planned)

    failures = run_stages(plan(cfg, out, data, runs, seeds, demonstrations), out, data, cfg.evaluation, context)
    summary = write_report(out, cfg, runs, seeds, data, demonstrations)
    print(summary["table"])
    print(f"\nreport: {out / 'report.md'}, {out / 'results.csv'}, plots in {out / 'plots'}")
    if failures:
        raise CommandFailed(f"{len(failures)} stage(s) failed, the report holds the rest: {failures[0]}")
    return summary


def settings(cfg: CompareConfig) -> dict:
    """The comparison's settings, one per flag, as ``compare_config.json`` records them: its own, and its
    evaluations' but those each evaluation sets."""
    own = {f.name: getattr(cfg, f.name) for f in fields(cfg) if not f.metadata.get("stage")}
    return {**{k: v for k, v in asdict(cfg.evaluation).items() if k not in SET_BY_STAGES}, **own}


def report_only(cfg: CompareConfig) -> dict:
    """``--report-only``: the report's differences, forgetting and entropy written again from OUT's evaluations."""
    if cfg.out is None:
        raise UsageError("--out is required")
    out = Path(cfg.out)
    if not (out / "compare_config.json").is_file() or not (out / "report.md").is_file():
        raise UsageError(f"--report-only: {out} holds no comparison's report (compare_config.json, report.md)")
    hold_directory(out, "compare", owned=lambda d: (d / "compare_config.json").is_file())
    written = rereport(out, cfg.reference)
    print("\n".join(written["sections"]))
    print(f"report: {out / 'report.md'}, {out / 'differences.csv'} (differences against {written['reference']})")
    return written


def run_stages(stages: list[Stage], out: Path, data: Path, engine: EvalConfig, context: CommandContext) -> list[str]:
    """The unfinished stages in order, with one live engine (``engine``: its settings); a failed training skips its
    evaluation, a failed collection stops the comparison. Returns the failures."""
    todo = [s for s in stages if not s.finished()]
    failures: list[str] = []
    skipped: set[str] = set()  # stages whose input a failed stage did not make
    live = LiveEngine(engine)  # the engine's own seed draws nothing: every request has its own
    bar = tqdm(total=len(stages), initial=len(stages) - len(todo), desc="compare", unit="stage")
    start = time.time()
    try:
        for stage in todo:
            bar.set_postfix_str(stage.name)
            if stage.needs is not None and (stage.needs in skipped or any(f.startswith(stage.needs + " ")
                                                                          for f in failures)):
                skipped.add(stage.name)  # nothing to evaluate, or to follow with RL
                bar.update(1)
                continue
            dataset_model = read_manifest(data)["model"] if (data / "manifest.json").exists() else None
            try:
                record = run_stage(stage, out / "logs", dataset_model, replace(context, live=live))
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


def run_stage(stage: Stage, logs: Path, dataset_model: str | None, context: CommandContext) -> dict:
    """Run ``stage``'s command function (``run_function``: the table offline-rl runs commands through) in this
    process, its output into its log (first line: the equivalent command line, to run it by hand); collections and
    evaluations sample with the context's live engine, which loads the stage's model in place, and iterate's rounds
    with it too. Returns the stage's record (seconds, engine milliseconds); raises :class:`StageFailed`."""
    live = context.live
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
            run_function(stage.command)(*configs, context=replace(context, engine=live.engine, given=stage.given))
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
