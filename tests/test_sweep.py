"""Sweeps with honest selection: the setting is chosen on the held-out split alone, whatever the test splits say;
a sweep expands into one run per value, every one evaluated on the selection split too."""

import random

import pytest

from offline_rl.experiments.sweep import parse_sweep, select, setting_name
from rollout.runtime import UsageError

GROUPS = {"dft": [(setting_name("dft", "lr", v), v) for v in (5e-5, 1e-4, 2e-4, 5e-4)]}


def _rows(valid: dict[float, list[float]], test: dict[float, list[float]]) -> list[dict]:
    rows = []
    for (name, value) in GROUPS["dft"]:
        for seed, (v, t) in enumerate(zip(valid[value], test[value], strict=True)):
            rows += [{"model": name, "seed": seed, "benchmark": "valid", "avg@4": v},
                     {"model": name, "seed": seed, "benchmark": "test-id", "avg@4": t}]
    return rows


def test_the_setting_is_chosen_on_the_selection_split_and_never_on_a_test_split():
    valid = {5e-5: [0.30, 0.31, 0.29], 1e-4: [0.36, 0.35, 0.37], 2e-4: [0.33, 0.34, 0.32], 5e-4: [0.20, 0.21, 0.19]}
    test = {5e-5: [0.50, 0.50, 0.50], 1e-4: [0.10, 0.10, 0.10], 2e-4: [0.20, 0.20, 0.20], 5e-4: [0.90, 0.90, 0.90]}
    chosen = select(_rows(valid, test), GROUPS, "valid", "avg@4")
    assert chosen["dft"]["value"] == 1e-4 and chosen["dft"]["run"] == "dft@lr=0.0001"
    rng = random.Random(0)
    for _ in range(20):  # any test results: the same choice
        shuffled = {v: [rng.random() for _ in range(3)] for v in test}
        assert select(_rows(valid, shuffled), GROUPS, "valid", "avg@4")["dft"]["value"] == 1e-4
    without_valid = [r for r in _rows(valid, test) if r["benchmark"] != "valid"]
    with pytest.raises(UsageError, match="no avg@4 on valid"):  # never falls back to a test split
        select(without_valid, GROUPS, "valid", "avg@4")


def test_ties_keep_the_first_value_of_the_grid():
    same = {v: [0.3, 0.3, 0.3] for v in (5e-5, 1e-4, 2e-4, 5e-4)}
    assert select(_rows(same, same), GROUPS, "valid", "avg@4")["dft"]["value"] == 5e-5


@pytest.mark.parametrize("spec, expected", [("lr=5e-5,1e-4", ("lr", [5e-5, 1e-4])),
                                            ("--alpha=1,10", ("alpha", [1, 10])),
                                            ("min-weight=0,0.1", ("min_weight", [0, 0.1]))])
def test_sweep_flags_parse(spec, expected):
    assert parse_sweep(spec) == expected


def test_a_sweep_of_one_value_is_refused():
    with pytest.raises(UsageError, match="at least two values"):
        parse_sweep("lr=1e-4")


def test_a_swept_comparison_chooses_on_valid_and_reports_the_choice(tmp_path, tiny_model_dir):
    """bin/compare --sweep on the transformers engine: every setting trained with every seed and evaluated on
    the test benchmark and on valid; the report's table holds each run once, at the value valid chose."""
    import csv
    import statistics

    from offline_rl.experiments.compare import main as compare_main
    from rollout.dataset import DatasetWriter
    from tests.conftest import make_rows

    writer = DatasetWriter(tmp_path / "data", {"model": str(tiny_model_dir)})
    writer.write_shard(make_rows(reward=lambda p, i: 1.0))
    writer.finish()
    out = tmp_path / "cmp"
    compare_main(["--data", str(tmp_path / "data"), "--out", str(out), "--learners", "rft", "--sweep", "lr=1e-3,3e-2",
                  "--seeds", "0,1", "--benchmarks", "test-id", "--problems", "3", "--k", "2", "--max-tokens", "8",
                  "--steps", "2", "--batch-size", "2", "--backend", "hf", "--report-to", "none",
                  "--heldout-text", "none"])
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {(r["model"], r["benchmark"]) for r in rows} >= {
        (m, b) for m in ("rft@lr=0.001", "rft@lr=0.03") for b in ("test-id", "valid")}
    valid = {m: statistics.fmean(float(r["avg@2"]) for r in rows if r["model"] == m and r["benchmark"] == "valid")
             for m in ("rft@lr=0.001", "rft@lr=0.03")}
    best = max(valid, key=valid.get)  # the first of equal scores, as select keeps it
    report = (out / "report.md").read_text()
    assert "## Chosen settings (on valid avg@2 alone" in report
    assert f"**{best.split('=')[1]}** |" in report
    table = [line for line in report.split("## avg@2 (%")[1].split("\n## ")[0].splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in table[1:]] == ["| base", "| rft"]  # one row per run, the chosen setting
    assert "valid" not in table[0]  # the selection split is never reported
    chosen_test = statistics.fmean(100 * float(r["avg@2"]) for r in rows if r["model"] == best and r["benchmark"] == "test-id")
    assert f"{chosen_test:.1f} ±" in table[2]
    assert (out / "plots" / "sensitivity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_sensitivity_plot_puts_a_learning_rate_on_a_log_axis_and_keeps_ties_apart(monkeypatch, tmp_path):
    """lr over a factor of 4 (a linear axis before): log scale, one labelled tick per swept value and no other; two
    runs with equal results drawn side by side, their tie labelled."""
    from offline_rl.experiments import plots
    from offline_rl.experiments.sweep import plot_sensitivity

    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig))
    grid = (5e-5, 1e-4, 2e-4)
    groups = {name: [(setting_name(name, "lr", v), v) for v in grid] for name in ("dft", "prob")}
    rows = [{"model": setting_name(name, "lr", v), "benchmark": "test-id", "avg@4": 0.3 + 100 * v + 0.01 * seed}
            for name in groups for v in grid for seed in range(2)]  # prob's results are dft's
    chosen = {name: {"value": 1e-4} for name in groups}
    plot_sensitivity(rows, groups, {"dft": "lr", "prob": "lr"}, chosen, "test-id", "avg@4", tmp_path / "s.png")

    ax = figures[0].axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "lr (log scale)"
    assert list(ax.get_xticks()) == list(grid) and not list(ax.xaxis.get_minorticklocs())
    assert [t.get_text() for t in ax.get_xticklabels()] == ["5e-5", "1e-4", "2e-4"]
    dft, prob = (next(line for line in ax.get_lines() if line.get_label().startswith(name)) for name in groups)
    at_dft, at_prob = (line.get_transform().transform(line.get_xydata()) for line in (dft, prob))
    assert (at_prob[:, 0] > at_dft[:, 0]).all() and (at_prob[:, 1] == at_dft[:, 1]).all()  # apart, equal height
    assert [t.get_text() for t in ax.texts] == ["2 equal"] * 3
    assert ax.get_ylim()[0] < 30.5 and ax.get_ylim()[1] > 32.5  # the dodged lines still set the limits
