"""Paired intervals for the difference between two models evaluated on the same problems with the same seeds.

Every evaluation of a comparison answers the same problems, and seed ``s`` of one model is evaluated with the same
sampling seed as seed ``s`` of another. A difference (model minus reference) is the mean over seeds and problems of
the per-problem differences of a score: a problem's share of correct samples (avg@k) or its unbiased pass@k. Its
95 % interval comes from a **paired bootstrap**: each of :data:`RESAMPLES` resamples draws the problems with
replacement and, independently, the seeds with replacement, and reads both models on the same draws, so that what
they share (a problem's difficulty, a seed's sampling) cancels out of the difference; the interval is the 2.5th and
97.5th percentile of the resampled differences (Efron & Tibshirani 1993, ch. 13). Where an evaluation kept no
per-problem results (comparisons committed before ``bin/eval`` stored them), the interval is Student's t over the
seeds' paired differences alone (n - 1 degrees of freedom), which leaves the problems' sampling out and says so.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from offline_rl.evaluate import pass_at_k, problem_ids_digest

RESAMPLES = 2000
BOOTSTRAP = "paired bootstrap"
SEEDS_T = "t over seeds"
# Student's t at 0.975 for 1..30 degrees of freedom (beyond: the normal's 1.96)
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


@dataclass(frozen=True)
class Difference:
    difference: float  # model minus reference, in the score's units
    low: float  # the 95 % interval
    high: float
    method: str  # BOOTSTRAP or SEEDS_T
    seeds: int
    problems: int | None  # None: per-problem results not kept (SEEDS_T)

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def paired_bootstrap(model: np.ndarray, reference: np.ndarray, resamples: int = RESAMPLES,
                     seed: int = 0) -> Difference:
    """The mean of ``model - reference`` ([seeds, problems] each, row ``s`` of both from seed ``s``, column ``i`` of
    both the same problem) and its 95 % percentile interval over resamples of problems and seeds."""
    model, reference = np.asarray(model, dtype=float), np.asarray(reference, dtype=float)
    if model.shape != reference.shape or model.ndim != 2:
        raise ValueError(f"paired scores need one shape [seeds, problems] (got {model.shape} and {reference.shape})")
    diff = model - reference  # [S, P]
    seeds, problems = diff.shape
    rng = np.random.default_rng(seed)
    # a resample as counts: how often each problem and each seed was drawn (the same draws for both models)
    problem_counts = rng.multinomial(problems, [1 / problems] * problems, size=resamples)  # [B, P]
    seed_counts = rng.multinomial(seeds, [1 / seeds] * seeds, size=resamples)  # [B, S]
    means = ((seed_counts @ diff) * problem_counts).sum(axis=1) / (seeds * problems)  # [B]
    low, high = np.quantile(means, [0.025, 0.975])
    return Difference(float(diff.mean()), float(low), float(high), BOOTSTRAP, seeds, problems)


def seeds_t(model: list[float], reference: list[float]) -> Difference | None:
    """The mean of the seeds' paired differences and Student's t interval around it; None from one seed."""
    diffs = [m - r for m, r in zip(model, reference, strict=True)]
    if len(diffs) < 2:
        return None
    mean = statistics.fmean(diffs)
    t = T975[len(diffs) - 2] if len(diffs) - 1 <= len(T975) else 1.96
    half = t * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return Difference(mean, mean - half, mean + half, SEEDS_T, len(diffs), None)


# ---------------------------------------------------------------- per-problem results on disk

@dataclass(frozen=True)
class ProblemResults:
    """One evaluation's per-problem results on one benchmark: correct samples of each problem, of ``k``."""

    correct: tuple[int, ...]
    k: int
    problems: str  # problem_ids_digest of the problems, in order

    def scores(self, metric: str) -> np.ndarray:
        """Each problem's avg@k (its share of correct samples) or pass@j (unbiased, from its k samples)."""
        if metric.startswith("avg@"):
            return np.array(self.correct, dtype=float) / self.k
        j = int(metric.removeprefix("pass@"))
        return np.array([pass_at_k(self.k, c, j) for c in self.correct])


def load_problem_results(evaluation: Path) -> dict[str, ProblemResults]:
    """Per benchmark, what ``evaluation`` (a bin/eval --out) kept per problem: ``results.json``'s counts, else its
    ``generations.parquet`` (evaluations made before the counts were stored; problems with no generation are those
    too long to read, which score 0); empty when neither holds them."""
    results = json.loads((evaluation / "results.json").read_text())
    k = results["k"]
    found = {name: ProblemResults(tuple(m["correct_per_problem"]), k, m["problem_ids"])
             for name, m in results["benchmarks"].items() if "correct_per_problem" in m}
    generations = evaluation / "generations.parquet"
    if len(found) == len(results["benchmarks"]) or not generations.exists():
        return found
    import pyarrow.parquet as pq

    counts: dict[str, dict[str, int]] = {}
    for row in pq.read_table(generations, columns=["benchmark", "prompt_id", "reward"]).to_pylist():
        per = counts.setdefault(row["benchmark"], {})
        per[row["prompt_id"]] = per.get(row["prompt_id"], 0) + int(row["reward"] == 1.0)
    for name, per in counts.items():
        if name not in found and len(per) == results["benchmarks"].get(name, {}).get("problems"):
            found[name] = ProblemResults(tuple(per.values()), k, problem_ids_digest(list(per)))
    return found


def difference(model: dict[int, dict], reference: dict[int, dict], benchmark: str, metric: str) -> Difference | None:
    """``model`` minus ``reference`` on one benchmark and metric, over the seeds both have. Each: seed -> {"rows":
    the evaluation's metrics per benchmark, "problems": its :class:`ProblemResults` per benchmark}. The paired
    bootstrap where every evaluation kept its problems (the same ones), else t over the seeds; None without a
    shared seed (or from one seed without problems)."""
    seeds = sorted(s for s in set(model) & set(reference)
                   if all(metric in side[s]["rows"].get(benchmark, {}) for side in (model, reference)))
    if not seeds:
        return None
    kept = [side[s]["problems"].get(benchmark) for side in (model, reference) for s in seeds]
    if all(kept) and len({p.problems for p in kept}) == 1:
        matrix = [np.stack([side[s]["problems"][benchmark].scores(metric) for s in seeds])
                  for side in (model, reference)]
        return paired_bootstrap(*matrix)
    return seeds_t([model[s]["rows"][benchmark][metric] for s in seeds],
                   [reference[s]["rows"][benchmark][metric] for s in seeds])


def evaluations(out: Path, model: str, seeds: list[int]) -> dict[int, dict]:
    """A comparison's evaluations of ``model`` (its directory name), seed -> its metrics and per-problem results."""
    found = {}
    for seed in seeds:
        path = out / "evals" / f"{model}-s{seed}"
        if (path / "results.json").exists():
            rows = json.loads((path / "results.json").read_text())["benchmarks"]
            found[seed] = {"rows": rows, "problems": load_problem_results(path)}
    return found


def interval_text(d: Difference | None, scale: float = 100.0, digits: int = 1) -> str:
    """``+2.6 [+1.1, +4.0] *`` in points (``*``: the interval excludes 0); ``–`` for none."""
    if d is None:
        return "–"
    return (f"{scale * d.difference:+.{digits}f} [{scale * d.low:+.{digits}f}, {scale * d.high:+.{digits}f}]"
            + (" *" if d.excludes_zero else ""))


# ---------------------------------------------------------------- the report's tables

def differences(out: Path, runs: dict[str, str], seeds: list[int], benchmarks: list[str], metrics: list[str],
                reference: str) -> dict[tuple[str, str, str], Difference | None]:
    """Every reported model against ``reference`` (names as reported; ``runs``: name -> its evaluations' directory
    name), per benchmark and metric: (model, benchmark, metric) -> its :class:`Difference`."""
    found = {name: evaluations(out, run, seeds) for name, run in runs.items()}
    return {(name, bench, metric): difference(found[name], found[reference], bench, metric)
            for name in runs if name != reference for bench in benchmarks for metric in metrics}


def differences_table(found: dict[tuple[str, str, str], Difference | None], models: list[str], benchmarks: list[str],
                      metric: str) -> str:
    """One row per model, one column per benchmark: the difference in points and its interval, ``*`` where the
    interval excludes 0; ``†`` on an interval from the seeds alone when others in the table are bootstrapped."""
    methods = {d.method for d in found.values() if d is not None}
    lines = ["| model | " + " | ".join(benchmarks) + " |", "|---|" + "---:|" * len(benchmarks)]
    for model in models:
        cells = []
        for bench in benchmarks:
            d = found.get((model, bench, metric))
            mixed = d is not None and d.method == SEEDS_T and len(methods) > 1
            cells.append(interval_text(d) + (" †" if mixed else ""))
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def method_text(found: dict[tuple[str, str, str], Difference | None]) -> str:
    """How the intervals of ``found`` were made, in a sentence."""
    shown = [d for d in found.values() if d is not None]
    parts = []
    if any(d.method == BOOTSTRAP for d in shown):
        parts.append(f"95 % intervals from a paired bootstrap ({RESAMPLES} resamples of the problems and the seeds "
                     "together, both models read on the same draws; percentile interval)")
    if any(d.method == SEEDS_T for d in shown):
        mark = " (marked †)" if parts else ""
        parts.append(f"95 % Student t intervals over the seeds' paired differences{mark}: these evaluations kept no "
                     "per-problem results, so the problems' own sampling is left out")
    return "; ".join(parts) + "; * where the interval excludes 0" if parts else "no difference to show"


def difference_rows(found: dict[tuple[str, str, str], Difference | None], reference: str) -> list[dict]:
    """``differences.csv``'s rows (in the metric's units, as results.csv)."""
    return [{"reference": reference, "model": model, "benchmark": bench, "metric": metric,
             "difference": round(d.difference, 6), "low": round(d.low, 6), "high": round(d.high, 6),
             "excludes_zero": d.excludes_zero, "method": d.method,
             "resamples": RESAMPLES if d.method == BOOTSTRAP else "", "seeds": d.seeds, "problems": d.problems or ""}
            for (model, bench, metric), d in found.items() if d is not None]


DIFFERENCE_COLUMNS = ["reference", "model", "benchmark", "metric", "difference", "low", "high", "excludes_zero",
                      "method", "resamples", "seeds", "problems"]
