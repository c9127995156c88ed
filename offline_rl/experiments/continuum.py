"""The capability continuum: the same comparison on bases of different strength, read side by side.

``python -m offline_rl.experiments.continuum DIR`` reads every comparison ``DIR/*/results.csv`` (bin/compare, one
per base model) and, where present, the base's view of its training data (``DIR/*/inspect-*/inspect.json``,
bin/inspect), and writes ``DIR/continuum.md`` (one row per base: its accuracy, each learner's gain over it, and
how DFT and the −p^α family stand against SFT) and ``DIR/continuum.png`` (the gains against the base's strength,
a ±std band per learner). Bases are ordered by their own accuracy on the metric's benchmark.
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
from pathlib import Path

from offline_rl.experiments.plots import save_figure
from offline_rl.experiments.report import mean_std
from rollout.dataset import atomic_write_bytes

LOW = "share_below_0.1"


def read_comparison(path: Path, benchmark: str, metric: str) -> dict[str, list[float]]:
    """Per model, its seeds' ``metric`` on ``benchmark`` (percent), from a comparison's results.csv."""
    scores: dict[str, list[float]] = {}
    with (path / "results.csv").open() as f:
        for row in csv.DictReader(f):
            if row["benchmark"] == benchmark and row.get(metric):
                scores.setdefault(row["model"], []).append(100 * float(row[metric]))
    return scores


def inspected(path: Path) -> dict[str, dict]:
    """The base's view of each inspected dataset (``inspect-NAME/inspect.json``), by NAME."""
    return {p.parent.name.removeprefix("inspect-"): json.loads(p.read_text())
            for p in sorted(path.glob("inspect-*/inspect.json"))}


def lead(scores: dict[str, list[float]], a: str, b: str) -> str:
    """a's mean minus b's, marked * beyond two pooled seed stds."""
    if a not in scores or b not in scores:
        return "–"
    (ma, sa), (mb, sb) = mean_std(scores[a]), mean_std(scores[b])
    pooled = ((sa ** 2 + sb ** 2) / 2) ** 0.5
    return f"{ma - mb:+.1f}" + (" *" if pooled > 0 and abs(ma - mb) > 2 * pooled else "")


def continuum_table(bases: list[tuple[str, dict]], learners: list[str], metric: str) -> str:
    """One row per base: its accuracy, every learner's mean ± std, and the leads the reading turns on."""
    head = ["base", f"base {metric}", *learners, "dft − sft", "prob1 − sft", "prob10 − sft", "dft_samples − rft"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name, scores in bases:
        cells = [name, "{:.1f} ± {:.1f}".format(*mean_std(scores["base"]))]
        cells += ["{:.1f} ± {:.1f}".format(*mean_std(scores[m])) if m in scores else "–" for m in learners]
        cells += [lead(scores, "dft", "sft"), lead(scores, "prob1", "sft"), lead(scores, "prob10", "sft"),
                  lead(scores, "dft_samples", "rft")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def inspect_table(bases: list[tuple[str, Path]]) -> str:
    """The base's token probabilities on each dataset it was trained on (DFT's weights)."""
    lines = ["| base | data | responses | mean p | share p < 0.1 | mean log-prob per response | closing EOS p |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name, path in bases:
        for data, s in inspected(path).items():
            tp, eos = s["token_probability"], s["eos"]
            eos_p = f"{eos['mean_probability']:.3f}" if eos["mean_probability"] is not None else "–"
            lines.append(f"| {name} | {data} | {s['responses']} | {tp['mean']:.3f} | {100 * tp[LOW]:.1f} % | "
                         f"{s['response_mean_logprob']['mean']:.3f} | {eos_p} |")
    return "\n".join(lines)


def plot_continuum(bases: list[tuple[str, dict]], learners: list[str], metric: str, path: Path) -> None:
    """Each learner's gain over its base against the base's own accuracy, a ±std band over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    strength = [statistics.fmean(scores["base"]) for _, scores in bases]
    for i, learner in enumerate(learners):
        points = [(x, mean_std([v - statistics.fmean(s["base"]) for v in s[learner]]))
                  for x, (_, s) in zip(strength, bases, strict=True) if learner in s]
        if not points:
            continue
        xs, ys = [x for x, _ in points], [m for _, (m, _) in points]
        sd = [d for _, (_, d) in points]
        ax.plot(xs, ys, marker="o", color=f"C{i}", label=learner)
        ax.fill_between(xs, [y - d for y, d in zip(ys, sd, strict=True)], [y + d for y, d in zip(ys, sd, strict=True)],
                        color=f"C{i}", alpha=0.15)
    ax.axhline(0, color="0.5", linewidth=1)
    for x, (name, _) in zip(strength, bases, strict=True):
        ax.annotate(name, (x, 0), textcoords="offset points", xytext=(0, -12), ha="center", fontsize=7, color="0.4")
    ax.set(xlabel=f"base model's {metric} (%)", ylabel=f"gain over the base ({metric} points)",
           title="Capability continuum: gain over each base (mean ± std over seeds)")
    ax.legend(fontsize=8, ncol=2)
    save_figure(fig, path)


def write_continuum(out: Path, benchmark: str = "test-id", metric: str = "avg@4") -> str:
    """``out/continuum.md`` and ``out/continuum.png`` from the comparisons under ``out``; returns the table."""
    found = [(p.parent.name, p.parent) for p in sorted(out.glob("*/results.csv"))]
    if not found:
        raise FileNotFoundError(f"no comparison (*/results.csv) under {out}")
    scores = {name: read_comparison(path, benchmark, metric) for name, path in found}
    bases = sorted(((name, s) for name, s in scores.items() if "base" in s),
                   key=lambda item: statistics.fmean(item[1]["base"]))
    learners = list(dict.fromkeys(m for _, s in bases for m in s if m != "base"))
    table = continuum_table(bases, learners, f"{benchmark} {metric}")
    by_name = dict(found)
    text = ["# Capability continuum", "",
            f"{benchmark} {metric} (%; mean ± std over seeds) of each learner on each base; a lead is the difference "
            "of means, * beyond two pooled seed stds.", "", table, "",
            "![continuum](continuum.png)", "",
            "## The bases' token probabilities on their training data (bin/inspect; DFT's weights)", "",
            inspect_table([(name, by_name[name]) for name, _ in bases]), ""]
    atomic_write_bytes(out / "continuum.md", "\n".join(text).encode())
    plot_continuum(bases, learners, metric, out / "continuum.png")
    return table


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        print("usage: python -m offline_rl.experiments.continuum DIR (a folder of bin/compare outputs)",
              file=sys.stderr)
        sys.exit(2)
    try:
        print(write_continuum(Path(sys.argv[1])))
    except FileNotFoundError as e:
        print(f"continuum: error: {e}", file=sys.stderr)
        sys.exit(2)
