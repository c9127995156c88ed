"""The comparison's plots: accuracy per benchmark (with each learner's gain over the base), training curves, held-out
NLL and entropy over training, and forgetting and entropy against accuracy."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from rollout.dataset import atomic_write_bytes


def _color(model: str, models: list[str], same_as: dict[str, str] | None = None) -> str:
    """The base model gray; each learner its own color: the tab10 cycle minus its gray up to 9 learners, tab20 minus
    its grays beyond. ``same_as``: a model drawn in another's color (NAME+rl in NAME's)."""
    same_as = same_as or {}
    model = same_as.get(model, model)
    if model == "base":
        return "0.6"
    learners = [m for m in dict.fromkeys(same_as.get(m, m) for m in models) if m != "base"]
    if len(learners) <= 9:
        return [f"C{i}" for i in range(10) if i != 7][learners.index(model) % 9]
    import matplotlib

    palette = [matplotlib.colormaps["tab20"](i) for i in range(20) if i not in (14, 15)]
    return palette[learners.index(model) % len(palette)]


def save_figure(fig, path: Path) -> None:
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def plot_accuracy(rows: list[dict], models: list[str], benchmarks: list[str], metric: str, path: Path,
                  gains: dict | None = None, same_as: dict[str, str] | None = None) -> None:
    """One panel per benchmark. Top: bars of mean accuracy with std error bars, each seed a dot. Bottom (with a
    base model): each learner's gain over the base with its paired 95 % interval (``gains``: (model, benchmark) ->
    :class:`~offline_rl.experiments.intervals.Difference`; without, the gray band is two of the base's seed stds
    either way), so that transfer along an out-of-distribution split shows at a glance. ``same_as``: models drawn in
    another's color (NAME+rl in NAME's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_gain = "base" in models
    per_bench = 2 if with_gain else 1  # rows of panels per benchmark: accuracy, then the gain
    columns = max(1, min(len(benchmarks), 24 // max(1, len(models))))  # many models: fewer benchmarks side by side
    groups = -(-max(1, len(benchmarks)) // columns)
    fig, axes = plt.subplots(per_bench * groups, columns, squeeze=False,
                             figsize=(1.2 + 0.5 * len(models) * columns, (6.4 if with_gain else 3.6) * groups))
    for index in range(len(benchmarks), groups * columns):  # the last group's empty panels
        for row in range(per_bench):
            axes[per_bench * (groups - 1) + row][index % columns].axis("off")
    for index, bench in enumerate(benchmarks):
        row, column = per_bench * (index // columns), index % columns
        ax = axes[row][column]
        present = [m for m in models if any(r["model"] == m and r["benchmark"] == bench for r in rows)]
        values = {m: [100 * r[metric] for r in rows if r["model"] == m and r["benchmark"] == bench] for m in present}
        means = {m: statistics.fmean(v) for m, v in values.items()}
        stds = {m: statistics.stdev(v) if len(v) > 1 else 0.0 for m, v in values.items()}
        ax.bar(range(len(present)), [means[m] for m in present], yerr=[stds[m] for m in present], capsize=3,
               color=[_color(m, models, same_as) for m in present])
        for i, m in enumerate(present):
            ax.plot([i] * len(values[m]), values[m], "k.", markersize=3)
        ax.set_xticks(range(len(present)), present, rotation=45, ha="right")
        ax.set_title(bench)
        ax.set_ylabel(f"{metric} (%)" if column == 0 else "")
        ax.grid(axis="y", alpha=0.3)
        if not with_gain:
            continue
        ax = axes[row + 1][column]
        learners = [m for m in present if m != "base"]
        if "base" in means:
            found = [(gains or {}).get((m, bench)) for m in learners]
            if gains is not None and all(found):  # the paired intervals
                heights = [100 * d.difference for d in found]
                errors = [[100 * (d.difference - d.low) for d in found], [100 * (d.high - d.difference) for d in found]]
            else:
                ax.axhspan(-2 * stds["base"], 2 * stds["base"], color="0.85")
                heights, errors = [means[m] - means["base"] for m in learners], [stds[m] for m in learners]
            ax.bar(range(len(learners)), heights, yerr=errors, capsize=3,
                   color=[_color(m, models, same_as) for m in learners])
        ax.axhline(0, color="0.4", linewidth=0.8)
        ax.set_xticks(range(len(learners)), learners, rotation=45, ha="right")
        ax.set_ylabel("gain over base (points, 95 % interval)" if column == 0 else "")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def plot_forgetting(out: Path, runs: dict[str, str], seeds: list[int], benchmark: str, metric: str, path: Path,
                    after: dict[str, str] | None = None) -> None:
    """Two panels, one point per model (mean over seeds, each seed a small dot): its held-out NLL and its samples'
    entropy (x) against its ``metric`` on ``benchmark`` (y); the base's as dashed lines. A learner right of the base's
    line forgot; one left of it on entropy narrowed its policy. ``after``: a model judged again after RL -> the model
    it started from, drawn as a triangle in that model's color with an arrow from it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    after = after or {}
    points: dict[str, list[dict]] = {}
    for name, run in runs.items():
        for seed in seeds:
            results = out / "evals" / f"{run}-s{seed}" / "results.json"
            if results.exists():
                res = json.loads(results.read_text())
                measured = res["benchmarks"].get(benchmark, {})
                points.setdefault(name, []).append({"nll": (res.get("heldout") or {}).get("nll"),
                                                    "entropy": measured.get("entropy"),
                                                    "y": 100 * measured.get(metric, 0)})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, key, label in ((axes[0], "nll", "held-out NLL (nats/token)"),
                           (axes[1], "entropy", f"entropy of its {benchmark} samples (nats/token)")):
        means = {}
        for name, found in points.items():
            found = [p for p in found if p[key] is not None]
            if not found:
                continue
            x, y = [p[key] for p in found], [p["y"] for p in found]
            color = _color(name, list(runs), after)
            ax.plot(x, y, ".", color=color, markersize=3)
            means[name] = (statistics.fmean(x), statistics.fmean(y))
            ax.plot(*means[name], "^" if name in after else "o", color=color,
                    label=None if name in after else name)
            if name == "base":
                ax.axvline(means[name][0], color="0.6", linestyle="--", linewidth=0.8)
        for name, start in after.items():
            if name in means and start in means:
                ax.annotate("", xy=means[name], xytext=means[start],
                            arrowprops={"arrowstyle": "->", "color": _color(start, list(runs), after), "alpha": 0.6})
        ax.set_xlabel(label)
        ax.set_ylabel(f"{benchmark} {metric} (%)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if after:
        handles += [Line2D([], [], marker=marker, color="0.3", linestyle="") for marker in "o^"]
        labels += ["before RL", "after the same RL (arrow)"]
    fig.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), ncols=1 + len(labels) // 22)
    fig.tight_layout()
    save_figure(fig, path)


def heldout_curves(metrics: Path) -> list[dict]:
    """A training's held-out records (``metrics.jsonl``'s lines with ``heldout_nll``)."""
    if not metrics.exists():
        return []
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return [r for r in records if "heldout_nll" in r]


def plot_heldout(out: Path, learners: list[str], seeds: list[int], path: Path) -> bool:
    """One panel per learner: the held-out NLL (solid, left axis) and the policy's held-out entropy (dashed, right)
    over training, one line per seed; whether any training logged them (else nothing is drawn)."""
    curves = {name: [heldout_curves(out / "runs" / f"{name}-s{seed}" / "metrics.jsonl") for seed in seeds]
              for name in learners}
    curves = {name: [c for c in found if c] for name, found in curves.items()}
    curves = {name: found for name, found in curves.items() if found}
    if not curves:
        return False
    draw_heldout(curves, path)
    return True


def draw_heldout(curves: dict[str, list[list[dict]]], path: Path) -> None:
    """``curves``: name -> one list of held-out records per seed (bin/train's own plot is one name, one seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(4, len(curves))
    rows = -(-len(curves) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 2.6 * rows), squeeze=False)
    for ax in axes.flat[len(curves):]:
        ax.axis("off")
    for ax, (name, found) in zip(axes.flat, curves.items(), strict=False):
        color = _color(name, ["base", *curves])
        twin = ax.twinx()
        for records in found:
            steps = [r["step"] for r in records]
            ax.plot(steps, [r["heldout_nll"] for r in records], color=color, linewidth=1)
            twin.plot(steps, [r["heldout_entropy"] for r in records], color="k", linestyle="--", linewidth=0.8)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.set_ylabel("held-out NLL", fontsize=8)
        twin.set_ylabel("entropy", fontsize=8)
        ax.tick_params(labelsize=7)
        twin.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("held-out NLL per token (solid, left) and the policy's entropy there (dashed, right)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


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
            records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] \
                if metrics.exists() else []
            if records:  # rounds that had nothing to train on log no step
                curves.append(records)
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
        twin.plot(steps, [statistics.fmean(v) for v in _series(curves, "loss", length)], color="k", linestyle="--",
                  linewidth=0.8, label="loss")
        twin.tick_params(labelsize=7)
        ax.tick_params(labelsize=7)
    fig.suptitle("training: NLL of trained tokens (solid, left) and the learner's loss (dashed, right)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
