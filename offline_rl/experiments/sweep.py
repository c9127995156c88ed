"""Sweeps with honest selection: a run's flag over a grid, each setting chosen on a held-out split.

``--sweep lr=5e-5,1e-4,2e-4`` (every run) or a run's ``sweep: {lr: [...]}`` in ``--runs`` expands the run into one
run per value, named ``NAME@FLAG=VALUE``, each trained with every seed and evaluated on the test benchmarks and on
the selection split (``--select-on``, default the world's ``valid``). The setting reported for NAME is the one
with the best mean ``avg@k`` on the selection split over the seeds; :func:`select` reads no other benchmark, so
the test splits never choose what they then report. Every learner swept gets the same grid size and budget.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from rollout.runtime import UsageError

SEPARATOR = "@"
SELECT_ON = "valid"  # the world split held out to choose a sweep's setting, never reported


def parse_sweep(spec: str | None) -> tuple[str, list] | None:
    """``FLAG=V1,V2,...`` -> (flag, values: numbers as numbers); None for no sweep. An empty value (``1e-4,,2e-4``)
    or one named twice (``1e-4,0.0001``) is refused, never dropped or run once for two."""
    if not spec:
        return None
    flag, _, values = spec.partition("=")
    flag = flag.strip().lstrip("-").replace("-", "_")
    texts = [v.strip() for v in values.split(",")]
    if not flag or len([t for t in texts if t]) < 2:
        raise UsageError(f"--sweep {spec!r}: expected FLAG=V1,V2,... with at least two values")
    if not all(texts):
        raise UsageError(f"--sweep {spec!r}: an empty value (two commas in a row, or one at an end)")
    return flag, distinct(flag, [_value(t) for t in texts], f"--sweep {spec!r}")


def _value(text: str):
    """A number as a number (``5e-5`` too, which YAML 1.1 reads as a string), else as YAML reads it."""
    import yaml

    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def check_grid(flag: str, grid, where: str) -> list:
    """A runs file's grid, numbers written as YAML 1.1 reads them as strings (``5e-5``) made numbers; no empty value
    (``null``, ``""``), none named twice."""
    if not isinstance(grid, list):
        raise UsageError(f"{where}: sweep {flag} needs a list of values (got {grid!r})")
    grid = [_value(v) if isinstance(v, str) else v for v in grid]
    if len(grid) < 2:
        raise UsageError(f"{where}: sweep {flag} needs a list of at least two different values (got {grid!r})")
    if any(v is None or v == "" for v in grid):
        raise UsageError(f"{where}: sweep {flag} has an empty value (got {grid!r})")
    return distinct(flag, grid, f"{where}: sweep")


def distinct(flag: str, grid: list, where: str) -> list:
    """``grid``, refused if two of its values are one setting (``1e-4`` and ``0.0001``: the same run name)."""
    seen: dict[str, object] = {}
    for value in grid:
        text = value_text(value)
        if text in seen:
            raise UsageError(f"{where} {flag} names the value {text} twice ({seen[text]!r} and {value!r}); "
                             "each value is one setting, trained once per seed")
        seen[text] = value
    return grid


def setting_name(name: str, flag: str, value) -> str:
    """The run name of one setting of a sweep: ``dft@lr=0.0001``."""
    return f"{name}{SEPARATOR}{flag}={value_text(value)}"


def groups_of(runs: list) -> tuple[dict[str, list[tuple[str, object]]], dict[str, str]]:
    """The swept runs by the run they expand: name -> [(setting's run name, value)], and name -> the flag swept."""
    groups: dict[str, list[tuple[str, object]]] = {}
    flags: dict[str, str] = {}
    for r in runs:
        if r.sweep:
            groups.setdefault(r.sweep, []).append((r.name, dict(r.flags)[r.swept]))
            flags[r.sweep] = r.swept
    return groups, flags


def select(rows: list[dict], groups: dict[str, list[tuple[str, object]]], split: str, metric: str) -> dict[str, dict]:
    """For each swept run, the setting with the best mean ``metric`` on ``split`` over the seeds (ties: the first in
    the grid's order). ``groups``: run name -> [(setting's run name, value)]. Only the rows of ``split`` are read."""
    chosen = {}
    for name, settings in groups.items():
        scores = {}
        for run_name, value in settings:
            values = [r[metric] for r in rows if r["model"] == run_name and r["benchmark"] == split and metric in r]
            if not values:
                raise UsageError(f"sweep {name}: {run_name} has no {metric} on {split} to choose by")
            scores[run_name] = (statistics.fmean(values), value)
        best = max(scores, key=lambda n: scores[n][0])  # max keeps the first of equal scores
        chosen[name] = {"run": best, "value": scores[best][1], "scores": {n: s for n, (s, _) in scores.items()}}
    return chosen


def selection_table(chosen: dict[str, dict], groups: dict[str, list[tuple[str, object]]], flags: dict[str, str],
                    split: str, metric: str) -> str:
    lines = [f"| run | swept | {split} {metric} per value (%, mean over seeds) | chosen |", "|---|---|---|---:|"]
    for name, settings in groups.items():
        cells = ", ".join(f"{value_text(v)}: {100 * chosen[name]['scores'][n]:.1f}" for n, v in settings)
        lines.append(f"| {name} | {flags[name]} | {cells} | **{value_text(chosen[name]['value'])}** |")
    return "\n".join(lines)


def value_text(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


DODGE = 4.0  # points between neighbouring runs' markers at one value, so that equal results stay apart


def plot_sensitivity(rows: list[dict], groups: dict[str, list[tuple[str, object]]], flags: dict[str, str],
                     chosen: dict[str, dict], benchmark: str, metric: str, path: Path) -> None:
    """``benchmark`` ``metric`` against each swept value, mean ± std over seeds as a band, one line per run; the
    chosen setting circled. A learning rate, and any positive values spanning a factor of 10 or more, on a
    logarithmic axis; ticks at the swept values alone. Runs sit a few points apart at each value, and results that
    several runs share are labelled with their count, so that a tie never hides a run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator
    from matplotlib.transforms import offset_copy

    from offline_rl.experiments.plots import save_figure

    series = []  # (name, values, means, stds)
    for name, settings in groups.items():
        points = []
        for run_name, value in settings:
            values = [100 * r[metric] for r in rows if r["model"] == run_name and r["benchmark"] == benchmark]
            if values and isinstance(value, int | float) and not isinstance(value, bool):
                points.append((float(value), statistics.fmean(values),
                               statistics.stdev(values) if len(values) > 1 else 0.0))
        if points:
            series.append((name, *(list(column) for column in zip(*points, strict=True))))
    ticks = sorted({x for _, xs, _, _ in series for x in xs})
    swept = sorted({flags[name] for name, *_ in series})
    logarithmic = bool(ticks) and ticks[0] > 0 and (swept == ["lr"] or ticks[-1] / ticks[0] >= 10)

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    if logarithmic:
        ax.set_xscale("log")
    for i, (name, xs, means, stds) in enumerate(series):
        color = f"C{i % 10}"
        dodged = offset_copy(ax.transData, fig=fig, x=DODGE * (i - (len(series) - 1) / 2), y=0, units="points")
        ax.plot(xs, means, marker="o", color=color, label=f"{name} ({flags[name]})", transform=dodged)
        low, high = [m - s for m, s in zip(means, stds, strict=True)], [m + s for m, s in zip(means, stds, strict=True)]
        ax.fill_between(xs, low, high, color=color, alpha=0.15, transform=dodged)
        ax.update_datalim([*zip(xs, low, strict=True), *zip(xs, high, strict=True)])  # dodged artists: not counted
        best = chosen[name]["value"]
        if isinstance(best, int | float) and float(best) in xs:
            j = xs.index(float(best))
            ax.plot([xs[j]], [means[j]], marker="o", markersize=14, markerfacecolor="none", color=color,
                     transform=dodged)
    ax.autoscale_view()
    shared: dict[tuple, list[float]] = {}  # (value, mean as the report prints it) -> the runs' means
    for _, xs, means, _ in series:
        for x, mean in zip(xs, means, strict=True):
            shared.setdefault((x, f"{mean:.1f}"), []).append(mean)
    for (x, _), equal in shared.items():
        if len(equal) > 1:
            ax.annotate(f"{len(equal)} equal", (x, max(equal)), xytext=(0, 9), textcoords="offset points",
                        ha="center", fontsize=7, color="0.3")
    ax.set_xticks(ticks, [tick_text(x) for x in ticks], rotation=45 if len(ticks) > 6 else 0)
    ax.xaxis.set_minor_locator(NullLocator())
    scale = " (log scale)" if logarithmic else ""
    ax.set(xlabel=(swept[0] if len(swept) == 1 else "swept value") + scale, ylabel=f"{benchmark} {metric} (%)")
    ax.set_title(f"sensitivity: {benchmark} {metric}, mean ± std over seeds\n"
                 "circled: chosen on the selection split", fontsize=9)
    if series:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    save_figure(fig, path)


def tick_text(value: float) -> str:
    """A swept value as a short tick label: 5e-5, 2e-4, 0.1, 16."""
    if value and not 1e-3 <= abs(value) < 1e4:
        mantissa, exponent = f"{value:.2e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{value:g}"
