"""The comparison's report: ``results.csv`` (one row per model, seed and benchmark), ``report.md`` (mean ± std over
seeds, gains over the base, budget and stage times) and its plots, all read from the stages' own files."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

from offline_rl.evaluate import pass_ks
from offline_rl.experiments.plan import ROOT, CompareConfig, Run
from offline_rl.experiments.plots import plot_accuracy, plot_training
from offline_rl.experiments.sweep import groups_of, plot_sensitivity, select, selection_table, value_text
from rollout.dataset import atomic_write_bytes, read_manifest


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


def cell_stats(rows: list[dict], models: list[str], benchmarks: list[str],
               metric: str) -> dict[tuple[str, str], tuple[float, float, int]]:
    """(mean, std, seeds) of ``metric`` in percent over the seeds, per model and benchmark that has it."""
    cells = {}
    for model in models:
        for bench in benchmarks:
            values = [100 * r[metric] for r in rows if r["model"] == model and r["benchmark"] == bench and metric in r]
            if values:
                cells[model, bench] = (*mean_std(values), len(values))
    return cells


def format_report_table(rows: list[dict], models: list[str], benchmarks: list[str], metric: str,
                        settings: dict[str, str] | None = None) -> str:
    """mean ± std (percent; the mean alone from one seed) per model and benchmark; the best mean of each column in
    bold; ``settings``: a column saying each model's setting."""
    cell = cell_stats(rows, models, benchmarks, metric)
    best = {b: max((round(cell[m, b][0], 1) for m in models if (m, b) in cell), default=None) for b in benchmarks}
    setting = "setting | " if settings else ""
    lines = ["| model | " + setting + " | ".join(f"{b} {metric}" for b in benchmarks) + " | seeds |",
             "|---|" + ("---|" if settings else "") + "---:|" * len(benchmarks) + "---:|"]
    for model in models:
        cells, n = [], 0
        for bench in benchmarks:
            if (model, bench) not in cell:
                cells.append("–")
                continue
            mean, std, count = cell[model, bench]
            n = max(n, count)
            text = f"{mean:.1f} ± {std:.1f}" if count > 1 else f"{mean:.1f}"  # one seed has no spread to show
            cells.append(f"**{text}**" if round(mean, 1) == best[bench] else text)  # ties as shown: all bold
        own = f"{settings.get(model, '–')} | " if settings else ""
        lines.append(f"| {model} | {own}" + " | ".join(cells) + f" | {n} |")
    return "\n".join(lines)


def run_setting(out: Path, run: Run, cfg: CompareConfig, seed: int) -> str:
    """What a reported run trained with: its rate (the chosen one, when swept) and batch; in rounds, how many, each
    sampling how many prompts x responses (as its first seed's bin/iterate resolved them)."""
    text = f"lr {run.lr(cfg.lr):g}" + (" (chosen)" if run.swept == "lr" else "")
    text += "".join(f", {k} {v}" + (" (chosen)" if k == run.swept else "") for k, v in run.flags
                    if k not in ("lr", "lr_scale"))
    if run.rounds is None:
        return text + f", batch {run.batch(cfg.batch_size)}"
    steps = cfg.steps // run.rounds
    resolved = out / "runs" / f"{run.name}-s{seed}" / "iterate_config.json"
    own = json.loads(resolved.read_text()) if resolved.exists() else {}
    prompts, n = own.get("prompts_per_round", "?"), own.get("n", run.n or "?")
    batch = (f"each round's {prompts} x {n} samples once" if run.batch_size == "round"
             else f"batch {run.batch(cfg.batch_size)}")
    return text + f", {run.rounds} rounds of {steps} step{'s' if steps > 1 else ''} ({batch})"


def transfer_table(rows: list[dict], models: list[str], benchmarks: list[str], metric: str) -> str:
    """Each learner's gain over the base model (points of ``metric``, mean over seeds) per benchmark, marked *
    where it exceeds two pooled seed stds (sqrt of the mean of the two variances): a gain beyond seed noise."""
    stats = {key: (mean, std) for key, (mean, std, _) in cell_stats(rows, models, benchmarks, metric).items()}
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
            done = [json.loads((r / "iterate_summary.json").read_text())
                    for r in runs if (r / "iterate_summary.json").exists()]
            if not done:
                continue
            mean = {key: statistics.fmean(d[key] for d in done)
                    for key in ("responses", "sampled_tokens", "collect_seconds", "train_seconds")}
            lines.append(f"| {model} | {rounds[model]} rounds of its own samples | {mean['responses']:.0f} | "
                         f"{mean['sampled_tokens']:.0f} | {mean['collect_seconds']:.0f} | "
                         f"{mean['train_seconds']:.0f} |")
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
    part the live engine took to start or to load a checkpoint's weights (``OUT/stages.jsonl``, each stage's last
    run)."""
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


def write_report(out: Path, cfg: CompareConfig, runs: list[Run], seeds: list[int], data: Path,
                 demonstrations: Path | None = None) -> dict:
    k = cfg.evaluation.k
    all_rows = collect_results(out, ["base", *(r.name for r in runs)], seeds)
    columns = ["model", "seed", "benchmark", "problems", f"avg@{k}", *[f"pass@{j}" for j in pass_ks(k) if j > 1],
               f"maj@{k}", "mean_response_tokens", "truncation_rate", "prompts_too_long", "train_seconds"]
    atomic_write_bytes(out / "results.csv", _csv_text(all_rows, columns).encode())  # every setting, every split
    groups, swept = groups_of(runs)
    chosen = select(all_rows, groups, cfg.select_on, f"avg@{k}") if groups else {}
    # reported: the base, the runs not swept, and each sweep's chosen setting under its run's name
    shown = {name: name for name in ["base", *(r.name for r in runs if not r.sweep)]}
    shown.update({c["run"]: group for group, c in chosen.items()})
    rows = [{**r, "model": shown[r["model"]]} for r in all_rows
            if r["model"] in shown and not (groups and r["benchmark"] == cfg.select_on)]
    models = list(dict.fromkeys(shown.values()))
    benchmarks = list(dict.fromkeys(r["benchmark"] for r in rows))
    reported = {shown[r.name]: r for r in runs if r.name in shown}  # each name's reported run (a chosen setting)
    settings = {"base": "–", **{name: run_setting(out, run, cfg, seeds[0]) for name, run in reported.items()}}
    table = format_report_table(rows, models, benchmarks, f"avg@{k}", settings)
    manifest = read_manifest(data) if (data / "manifest.json").exists() else {}
    lines = _report_header(out, cfg, runs, seeds, data, demonstrations, manifest, rows, benchmarks)
    if groups:
        reported = "test-id" if "test-id" in benchmarks else benchmarks[0]
        lines += ["", f"## Chosen settings (on {cfg.select_on} avg@{k} alone; every value trained with every seed, "
                  "the same grid size and budget per run)", "",
                  selection_table(chosen, groups, swept, cfg.select_on, f"avg@{k}"), "",
                  "![sensitivity](plots/sensitivity.png)", ""]
        plot_sensitivity(all_rows, groups, swept, chosen, reported, f"avg@{k}", out / "plots" / "sensitivity.png")
    spread = "mean ± std over seeds" if len(seeds) > 1 else f"one seed, {seeds[0]}"
    lines += ["", f"## avg@{k} (%; {spread}; best per column in bold)", "", table, ""]
    if "base" in models and len(seeds) > 1:
        lines += [f"## Transfer: gain over the base model (avg@{k} points; * beyond two pooled seed stds)", "",
                  transfer_table(rows, models, benchmarks, f"avg@{k}"), ""]
    on_demonstrations = {r.name for r in runs if r.data == "demonstrations"} if demonstrations is not None else set()
    trained = list(shown)  # the run directories of what is reported (a sweep's chosen setting by its own name)
    lines += ["## Budget: samples and time per learner (mean over seeds)", "",
              budget_table(out, trained, seeds, manifest, on_demonstrations,
                           {r.name: r.rounds for r in runs if r.rounds}), ""]
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
    plot_training(out, [m for m in shown if m != "base"], seeds, out / "plots" / "training.png")
    return {"table": table, "rows": rows}


def _report_header(out: Path, cfg: CompareConfig, runs: list[Run], seeds: list[int], data: Path,
                   demonstrations: Path | None, manifest: dict, rows: list[dict], benchmarks: list[str]) -> list[str]:
    """The report's opening: the dataset, the budget, the time, and what each run did differently."""
    counts = manifest.get("counts", {})
    model = str(manifest.get("model", "?"))
    if Path(model).is_absolute() and Path(model).is_relative_to(ROOT):
        model = str(Path(model).relative_to(ROOT))  # the shipped base model, wherever the repo lives
    train_seconds = sum(r["train_seconds"] or 0 for r in rows if r["benchmark"] == benchmarks[0]) if rows else 0
    eval_seconds = sum(json.loads(p.read_text()).get("wall_seconds", 0) for p in (out / "evals").glob("*/results.json"))
    own_rates = " (a run's own where the setting column says)" if any(r.lr(cfg.lr) != cfg.lr for r in runs) else ""
    evaluation = cfg.evaluation
    lines = [
        "# Offline RL learners compared", "",
        f"Dataset `{data}`: {counts.get('responses', '?')} responses to {counts.get('prompts', '?')} prompts "
        f"from `{model}`, pass rate {manifest.get('pass_rate', float('nan')):.3f}"
        f" (collected in {manifest.get('wall_seconds', 0) / 60:.1f} min).",
        f"Budget per learner: {cfg.steps} optimizer steps of {cfg.batch_size} sequences (DPO: pairs), "
        f"AdamW, peak lr {cfg.lr:g}{own_rates} with 5 % warm-up and cosine decay; seeds {', '.join(map(str, seeds))} "
        f"(training order and evaluation sampling). Evaluation: k = {evaluation.k} samples per problem at temperature "
        f"{evaluation.temperature:g}, top-p {evaluation.top_p:g}, at most {evaluation.max_tokens} tokens.",
        f"Time: training {train_seconds / 60:.1f} min, evaluation {eval_seconds / 60:.1f} min in all "
        "(inside the commands; see the stage times below).",
    ]
    shown = [r.name for r in runs if r.data == "demonstrations"]
    if demonstrations is not None and shown:
        demo = read_manifest(demonstrations) if (demonstrations / "manifest.json").exists() else {}
        lines.append(f"Trained on demonstrations (`{demonstrations}`, {demo.get('counts', {}).get('responses', '?')} "
                     f"rows from {demo.get('source', {}).get('kind', '?')}): {', '.join(shown)}; "
                     "the others on the dataset above.")
    own = [f"{r.name}: {r.learner}" + (f", lr {r.lr(cfg.lr):g}" if r.lr(cfg.lr) != cfg.lr else "")
           + "".join(f", {k} {v}" for k, v in r.flags if k not in ("lr", "lr_scale"))
           + (f", batch {r.batch_size}" if r.batch_size not in (None, "round") else "")
           for r in runs
           if r.learner != r.name or r.flags or r.lr(cfg.lr) != cfg.lr or r.batch_size not in (None, "round")]
    if own:
        lines.append("Run settings: " + "; ".join(own) + ".")
    sweeps, swept = groups_of(runs)
    if sweeps:  # the tuning budget, equal for every run swept
        lines.append("Sweeps (each value trained with every seed, chosen on the selection split): " + "; ".join(
            f"{name} over {swept[name]} in {{{', '.join(value_text(v) for _, v in settings)}}}: {len(settings)} x "
            f"{len(seeds)} trainings of {cfg.steps} steps" for name, settings in sweeps.items()) + ".")
    rounds = [r for r in runs if r.rounds]
    if rounds:
        lines.append("Trained in rounds with bin/iterate, each collecting from its own current policy with the "
                     "dataset's sampling settings and prompts shared out over the rounds: "
                     + ", ".join(f"{r.name} ({r.rounds} rounds of {cfg.steps // r.rounds} steps"
                                 + (f", {r.n} responses per prompt" if r.n else "")
                                 + (", every sample of a round in its steps" if r.batch_size == "round" else "")
                                 + ")" for r in rounds) + ".")
    return lines


def _csv_text(rows: list[dict], columns: list[str]) -> str:
    import io

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()
