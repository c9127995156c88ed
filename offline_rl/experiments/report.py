"""The comparison's report: ``results.csv`` (one row per model, seed and benchmark), ``report.md`` (mean ± std over
seeds, differences against a reference run and the base with paired intervals, what each model forgot and its
entropy, budget and stage times), ``differences.csv`` and the plots, all read from the stages' own files.
:func:`rereport` writes the parts that need only the evaluations again, for a comparison kept without its runs."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

from offline_rl.evaluate import pass_ks
from offline_rl.experiments import intervals
from offline_rl.experiments.plan import AFTER_RL, AFTER_RL_LR, AFTER_RL_N, ROOT, CompareConfig, Run
from offline_rl.experiments.plots import plot_accuracy, plot_forgetting, plot_heldout, plot_training
from offline_rl.experiments.sweep import SELECT_ON, groups_of, plot_sensitivity, select, selection_table, value_text
from rollout.dataset import atomic_write_bytes, read_manifest
from rollout.runtime import UsageError


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
            expert = statistics.fmean(d.get("expert_tokens", 0) for d in done)  # chord's, apart from the sampled
            what = f"{rounds[model]} rounds of its own samples" + (f" and {expert:.0f} expert tokens" if expert else "")
            lines.append(f"| {model} | {what} | {mean['responses']:.0f} | "
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
    lines = ["| stage | runs | total (min) | mean (s) | engine start or weight load, in all (s) |",
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
    names = ["base", *(r.name for r in runs)]
    all_rows = collect_results(out, names + [f"{n}{AFTER_RL}" for n in names if cfg.after_rl], seeds)
    columns = ["model", "seed", "benchmark", "problems", f"avg@{k}", *[f"pass@{j}" for j in pass_ks(k) if j > 1],
               f"maj@{k}", "mean_response_tokens", "truncation_rate", "prompts_too_long", "entropy", "train_seconds"]
    atomic_write_bytes(out / "results.csv", _csv_text(all_rows, columns).encode())  # every setting, every split
    groups, swept = groups_of(runs)
    shown, chosen = reported_runs(all_rows, runs, cfg.select_on, k, cfg.after_rl)
    rows = [{**r, "model": shown[r["model"]]} for r in all_rows
            if r["model"] in shown and not (groups and r["benchmark"] == cfg.select_on)]
    models = list(dict.fromkeys(shown.values()))
    benchmarks = list(dict.fromkeys(r["benchmark"] for r in rows))
    reported = {shown[r.name]: r for r in runs if r.name in shown}  # each name's reported run (a chosen setting)
    settings = {"base": "–", **{name: run_setting(out, run, cfg, seeds[0]) for name, run in reported.items()},
                **{name: after_rl_setting(cfg) for name in models if name.endswith(AFTER_RL)}}
    table = format_report_table(rows, models, benchmarks, f"avg@{k}", settings)
    manifest = read_manifest(data) if (data / "manifest.json").exists() else {}
    lines = _report_header(out, cfg, runs, seeds, data, demonstrations, manifest, rows, benchmarks)
    if groups:
        first = "test-id" if "test-id" in benchmarks else benchmarks[0]
        lines += ["", f"## Chosen settings (on {cfg.select_on} avg@{k} alone; every value trained with every seed, "
                  "the same grid size and budget per run)", "",
                  selection_table(chosen, groups, swept, cfg.select_on, f"avg@{k}"), "",
                  "![sensitivity](plots/sensitivity.png)", ""]
        plot_sensitivity(all_rows, groups, swept, chosen, first, f"avg@{k}", out / "plots" / "sensitivity.png")
    spread = "mean ± std over seeds" if len(seeds) > 1 else f"one seed, {seeds[0]}"
    lines += ["", f"## avg@{k} (%; {spread}; best per column in bold)", "", table, ""]
    runs_of = {name: run for run, name in shown.items()}
    reference = check_reference(cfg.reference, models)
    sections, gains = honest_sections(out, runs_of, seeds, benchmarks, k, reference)
    lines += sections + after_rl_section(out, runs_of, seeds, benchmarks, k)
    on_demonstrations = {r.name for r in runs if r.data == "demonstrations"} if demonstrations is not None else set()
    trained = list(shown)  # the run directories of what is reported (a sweep's chosen setting by its own name)
    lines += ["## Budget: samples and time per learner (mean over seeds)", "",
              budget_table(out, trained, seeds, manifest, on_demonstrations,
                           {r.name: r.rounds for r in runs if r.rounds}
                           | {name: cfg.after_rl for name in trained if name.endswith(AFTER_RL)}), ""]
    stage_table = stage_times_table(out)
    if stage_table:
        lines += ["## Stage times (wall seconds of each stage's command, this process)", "", stage_table, ""]
    for metric in [f"pass@{k}", f"maj@{k}"]:
        if k > 1:
            lines += [f"## {metric} (%)", "", format_report_table(rows, models, benchmarks, metric), ""]
    lines += ["## Plots", "", "![accuracy per benchmark](plots/accuracy.png)", "",
              "![training curves](plots/training.png)", ""]
    trained_names = [m for m in shown if m != "base"]
    if plot_heldout(out, trained_names, seeds, out / "plots" / "heldout.png"):
        lines += ["![held-out NLL and entropy over training](plots/heldout.png)", ""]
    atomic_write_bytes(out / "report.md", "\n".join(lines).encode())
    plot_accuracy(rows, models, benchmarks, f"avg@{k}", out / "plots" / "accuracy.png", gains,
                  after_rl_of(models))
    plot_training(out, trained_names, seeds, out / "plots" / "training.png")
    return {"table": table, "rows": rows}


def reported_runs(all_rows: list[dict], runs: list[Run], select_on: str, k: int,
                  after_rl: int = 0) -> tuple[dict[str, str], dict]:
    """What the report shows: the base, the runs not swept, and each sweep's setting chosen on ``select_on`` under
    its run's name (run directory name -> name shown), then each of them after RL (``after_rl``: its rounds); and
    the sweeps' choices."""
    groups, _ = groups_of(runs)
    chosen = select(all_rows, groups, select_on, f"avg@{k}") if groups else {}
    shown = {name: name for name in ["base", *(r.name for r in runs if not r.sweep)]}
    shown.update({c["run"]: group for group, c in chosen.items()})
    if after_rl:
        shown.update({f"{run}{AFTER_RL}": f"{name}{AFTER_RL}" for run, name in list(shown.items())})
    return shown, chosen


def after_rl_setting(cfg: CompareConfig) -> str:
    """What the after-RL stage did, the same for every model."""
    return (f"then {cfg.after_rl} rounds of GRPO, {cfg.steps // cfg.after_rl} steps each, lr "
            f"{cfg.after_rl_lr or AFTER_RL_LR:g}, groups of {cfg.after_rl_n or AFTER_RL_N}")


def after_rl_of(names) -> dict[str, str]:
    """Each model judged again after RL (NAME+rl) among ``names`` -> the model it started from (NAME)."""
    return {f"{name}{AFTER_RL}": name for name in names if f"{name}{AFTER_RL}" in names}


def after_rl_section(out: Path, runs: dict[str, str], seeds: list[int], benchmarks: list[str], k: int) -> list[str]:
    """Each model before and after the same RL on the first reported benchmark (test-id where reported): avg@k, the
    change with its paired interval, and the ranks, with Kendall's tau between the two orders (1: the ranking
    survives RL). ``runs``: name shown -> its evaluations' directory name. No lines without after-RL models."""
    metric, bench = f"avg@{k}", "test-id" if "test-id" in benchmarks else benchmarks[0]
    pairs = [(before, after) for after, before in after_rl_of(runs).items()]
    found = {name: intervals.evaluations(out, runs[name], seeds) for pair in pairs for name in pair}
    means = {name: statistics.fmean(e["rows"][bench][metric] for e in found[name].values()
                                    if metric in e["rows"].get(bench, {})) for name in found
             if any(metric in e["rows"].get(bench, {}) for e in found[name].values())}
    pairs = [(before, after) for before, after in pairs if before in means and after in means]
    if not pairs:
        return []
    rank = {name: 1 + sorted((means[b] for b, _ in pairs), reverse=True).index(means[name]) for name, _ in pairs}
    rank |= {name: 1 + sorted((means[a] for _, a in pairs), reverse=True).index(means[name]) for _, name in pairs}
    agree = [(rank[b1] - rank[b2]) * (rank[a1] - rank[a2])
             for i, (b1, a1) in enumerate(pairs) for b2, a2 in pairs[i + 1:]]
    tau = (sum(x > 0 for x in agree) - sum(x < 0 for x in agree)) / max(1, len(agree))
    changes = {before: intervals.difference(found[after], found[before], bench, metric) for before, after in pairs}
    lines = [f"## Judged again after the same RL ({bench} {metric}, %)", "",
             f"Each model before and after the same online GRPO stage (NAME+rl); the change with its 95 % interval "
             f"({next((d.method for d in changes.values() if d), '–')}), * where it excludes 0; ranks among these "
             f"{len(pairs)} models. Kendall's tau between the orders before and after RL: {tau:+.2f} (1: the "
             "ranking survives RL).", "",
             "| model | before | after RL | change | rank before → after |", "|---|---:|---:|---:|---:|"]
    for before, after in pairs:
        lines.append(f"| {before} | {100 * means[before]:.1f} | {100 * means[after]:.1f} | "
                     f"{intervals.interval_text(changes[before])} | {rank[before]} → {rank[after]} |")
    return lines + [""]


def check_reference(reference: str | None, names: list[str]) -> str:
    """The run the differences are taken against: the one named, else sft where there is one, else the base model;
    one line if the name is no reported run's."""
    if reference is None:
        return "sft" if "sft" in names else "base"
    if reference not in names:
        raise UsageError(f"--reference {reference}: no run of that name in this comparison (runs: {', '.join(names)})")
    return reference


def honest_sections(out: Path, runs: dict[str, str], seeds: list[int], benchmarks: list[str], k: int,
                    reference: str) -> tuple[list[str], dict]:
    """The report's differences against ``reference`` (avg@k and pass@k) and against the base (avg@k), with paired
    intervals, written to ``differences.csv`` too; then what each model forgot and its entropy (with their plot).
    ``runs``: name shown -> its evaluations' directory name. Returns the lines and the gains over the base."""
    metrics = [f"avg@{k}"] + ([f"pass@{k}"] if k > 1 else [])
    lines, csv_rows, gains = [], [], {}
    for against in [reference] + (["base"] if reference != "base" and "base" in runs else []):
        found = intervals.differences(out, runs, seeds, benchmarks, metrics if against == reference else metrics[:1],
                                      against)
        csv_rows += intervals.difference_rows(found, against)
        if against == "base":
            gains = {(m, b): d for (m, b, _), d in found.items()}
        shown = [m for m in runs if m != against]
        lines += [f"## Differences against {against} (points, model minus {against})", "",
                  intervals.method_text(found) + ".", ""]
        for metric in metrics if against == reference else metrics[:1]:
            lines += [f"{metric}:", "", intervals.differences_table(found, shown, benchmarks, metric), ""]
    for after, name in after_rl_of(runs).items():  # each model after RL against itself before
        pair = {name: runs[name], after: runs[after]}
        csv_rows += intervals.difference_rows(intervals.differences(out, pair, seeds, benchmarks, metrics, name), name)
    atomic_write_bytes(out / "differences.csv", _csv_text(csv_rows, intervals.DIFFERENCE_COLUMNS).encode())
    forgetting = forgetting_table(out, runs, seeds, benchmarks, k)
    if forgetting:
        lines += forgetting + ["![forgetting and entropy against accuracy](plots/forgetting.png)", ""]
        plot_forgetting(out, runs, seeds, benchmarks[0], f"avg@{k}", out / "plots" / "forgetting.png",
                        after_rl_of(runs))
    return lines, gains


def model_measures(out: Path, run: str, seeds: list[int], benchmarks: list[str], k: int) -> dict[int, dict]:
    """Per seed, an evaluation's held-out NLL (its ``heldout`` record) and the entropy of its samples over the
    reported benchmarks (each benchmark's weighted by the tokens it sampled)."""
    found = {}
    for seed in seeds:
        path = out / "evals" / f"{run}-s{seed}" / "results.json"
        if not path.exists():
            continue
        res = json.loads(path.read_text())
        measures = {}
        if res.get("heldout"):
            measures["nll"] = res["heldout"]["nll"]
        parts = [(m["entropy"], m["mean_response_tokens"] * (m["problems"] - m.get("prompts_too_long", 0)) * k)
                 for b, m in res["benchmarks"].items() if b in benchmarks and m.get("entropy") is not None]
        if parts and sum(t for _, t in parts) > 0:
            measures["entropy"] = sum(e * t for e, t in parts) / sum(t for _, t in parts)
        found[seed] = measures
    return found


def forgetting_table(out: Path, runs: dict[str, str], seeds: list[int], benchmarks: list[str], k: int) -> list[str]:
    """What each model forgot (its mean NLL per token on the held-out text the evaluations name) and its policy's
    entropy, each beside the base's, with the change from the base and its t interval over the seeds' paired
    differences; no lines when no evaluation measured either."""
    measures = {name: model_measures(out, run, seeds, benchmarks, k) for name, run in runs.items()}
    keys = [key for key in ("nll", "entropy") if any(key in m for ms in measures.values() for m in ms.values())]
    if not keys:
        return []
    heldout = next((json.loads(p.read_text()).get("heldout") for p in sorted((out / "evals").glob("*/results.json"))
                    if json.loads(p.read_text()).get("heldout")), None)
    titles = {"nll": "held-out NLL", "entropy": "entropy"}
    lines = ["## Forgetting and entropy", ""]
    if heldout:
        lines.append(f"Held-out NLL: each model's mean negative log-likelihood per token (nats) of `{heldout['text']}` "
                     f"({heldout['documents']} documents, {heldout['tokens']} tokens scored).")
    if "entropy" in keys:
        lines.append("Entropy: the mean token entropy (nats) of each model's own evaluation samples over "
                     f"{', '.join(benchmarks)}, estimated from their log-probs.")
    lines += ["Mean ± std over seeds; change from the base: mean of the seeds' paired differences, 95 % Student t "
              "interval over the seeds, * where it excludes 0.", "",
              "| model | " + " | ".join(f"{titles[key]} | change" for key in keys) + " |",
              "|---|" + "---:|---:|" * len(keys)]
    base = measures.get("base", {})
    for name in runs:
        cells = []
        for key in keys:
            values = [m[key] for m in measures[name].values() if key in m]
            mean, std = mean_std(values) if values else (None, None)
            cells.append("–" if mean is None else f"{mean:.3f}" + (f" ± {std:.3f}" if len(values) > 1 else ""))
            paired = [s for s in measures[name] if key in measures[name][s] and key in base.get(s, {})]
            change = intervals.seeds_t([measures[name][s][key] for s in paired], [base[s][key] for s in paired])
            cells.append("–" if name == "base" else intervals.interval_text(change, scale=1, digits=3))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


REPLACED_SECTIONS = ("## Differences against", "## Transfer: gain over the base", "## Forgetting and entropy",
                     "## Judged again after the same RL")


def rereport(out: Path, reference: str | None = None) -> dict:
    """A comparison's differences, forgetting and entropy written again from its evaluations alone (a committed
    comparison keeps no runs or data): ``differences.csv``, and in ``report.md`` those sections replaced (the old
    transfer table among them) right after the avg@k table; the rest of ``report.md`` stays as it was written."""
    saved = json.loads((out / "compare_config.json").read_text())
    seeds = [int(s) for s in str(saved["seeds"]).split(",")]
    k, select_on = int(saved.get("k", 4)), saved.get("select_on") or SELECT_ON
    runs, after_rl = saved_runs(out, saved), int(saved.get("after_rl") or 0)
    names = ["base", *(r.name for r in runs)]
    all_rows = collect_results(out, names + [f"{n}{AFTER_RL}" for n in names if after_rl], seeds)
    shown, _ = reported_runs(all_rows, runs, select_on, k, after_rl)
    benchmarks = [b for b in dict.fromkeys(r["benchmark"] for r in all_rows) if not (
        any(r.sweep for r in runs) and b == select_on)]
    runs_of = {name: run for run, name in shown.items()}
    reference = check_reference(reference, list(runs_of))
    sections, _ = honest_sections(out, runs_of, seeds, benchmarks, k, reference)
    sections += after_rl_section(out, runs_of, seeds, benchmarks, k)
    kept, skipping, at = [], False, None
    text = (out / "report.md").read_text()
    for line in text.splitlines():
        if line.startswith("## "):
            skipping = line.startswith(REPLACED_SECTIONS)
            if at is None and not skipping and any(h.startswith("## avg@") for h in kept):
                at = len(kept)  # the first section after the avg@k table
        if not skipping:
            kept.append(line)
    at = len(kept) if at is None else at
    ending = "\n" if text.endswith("\n") else ""
    atomic_write_bytes(out / "report.md", ("\n".join(kept[:at] + sections + kept[at:]) + ending).encode())
    return {"reference": reference, "sections": sections}


def saved_runs(out: Path, saved: dict) -> list[Run]:
    """The runs a comparison recorded: ``compare_runs.json``, or the ``learners`` of an older ``compare_config.json``
    (``name=learner`` pairs)."""
    if (out / "compare_runs.json").is_file():
        return [Run(r["name"], r["learner"], r.get("data", "dataset"), tuple((r.get("flags") or {}).items()),
                    r.get("rounds"), r.get("n"), r.get("batch_size"), r.get("sweep"), r.get("swept"))
                for r in json.loads((out / "compare_runs.json").read_text())["runs"]]
    return [Run(name, learner or name) for name, _, learner in
            (part.strip().partition("=") for part in saved["learners"].split(",") if part.strip())]


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
    if cfg.after_rl:
        lines.append(f"After RL: the base and every run, each seed, followed from its final weights by the same online "
                     f"GRPO ({after_rl_setting(cfg).removeprefix('then ')}; bin/iterate sampling as the dataset was, "
                     "its prompts shared over the rounds, the run's seed), reported as NAME+rl.")
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
