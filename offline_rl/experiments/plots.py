"""The comparison's plots: accuracy per benchmark (with each learner's gain over the base) and training curves."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from rollout.dataset import atomic_write_bytes


def _color(model: str, models: list[str]) -> str:
    """The base model gray; each learner its own color of the tab10 cycle minus its gray."""
    if model == "base":
        return "0.6"
    palette = [f"C{i}" for i in range(10) if i != 7]
    return palette[[m for m in models if m != "base"].index(model) % len(palette)]


def save_figure(fig, path: Path) -> None:
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
        twin.plot(steps, [statistics.fmean(v) for v in _series(curves, "loss", length)], color="k", linestyle="--",
                  linewidth=0.8, label="loss")
        twin.tick_params(labelsize=7)
        ax.tick_params(labelsize=7)
    fig.suptitle("training: NLL of trained tokens (solid, left) and the learner's loss (dashed, right)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
