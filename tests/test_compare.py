"""bin/compare: learners × seeds under one budget -> report.md, results.csv, plots; resumable; bad input."""

import csv
import json
from pathlib import Path

import pytest

from offline_rl.experiments.plan import CompareConfig, Run, parse_runs, plan
from offline_rl.experiments.plots import plot_accuracy
from offline_rl.experiments.report import format_report_table
from tests.conftest import run_bin

EVAL = ["--k", "2", "--max-tokens", "48"]
ARGS = ["--learners", "dft", "--seeds", "0,1", "--benchmarks", "test-id,test-names", *EVAL, "--problems", "6",
        "--steps", "3", "--batch-size", "4", "--backend", "vllm"]


@pytest.mark.slow
def test_compare_one_learner_two_seeds_writes_report_csv_and_plots_and_resumes(tmp_path, vllm_dataset, capfd):
    import pyarrow.parquet as pq

    out = tmp_path / "cmp"
    heldout = tmp_path / "heldout.txt"  # the forgetting panel on two documents, to stay fast
    heldout.write_text("Tom has 5 cards. He finds 2 more cards.\n\nMia starts with 8 apples.\n8 - 3 = 5.\n")
    result = run_bin("compare", "--data", str(vllm_dataset), "--out", str(out), *ARGS, "--heldout-text", str(heldout))
    assert result.returncode == 0, result.stderr[-3000:]

    # one engine for every evaluation: started once, then each checkpoint's weights loaded in place (base, dft s0,
    # base again, dft s1); an evaluation in place samples what a fresh engine samples at its seed, and both
    # benchmarks in one pass through the engine sample what a pass of one benchmark alone samples
    stages = [json.loads(line) for line in (out / "stages.jsonl").read_text().splitlines()]
    assert [(r["stage"], r.get("engine")) for r in stages if r["command"] == "eval"] == [
        ("eval base s0", "started"), ("eval dft s0", "loaded in place"), ("eval base s1", "loaded in place"),
        ("eval dft s1", "loaded in place")]
    for model, name, seed, benchmarks in ((out / "runs" / "dft-s0", "dft", 0, "test-names"),):
        fresh = tmp_path / f"fresh-{name}-s{seed}"
        alone = run_bin("eval", "--model", str(model), "--seed", str(seed), "--benchmarks", benchmarks, *EVAL,
                        "--problems", "6", "--out", str(fresh))
        assert alone.returncode == 0, alone.stderr[-2000:]
        live = [(g["benchmark"], g["response"], g["reward"])
                for g in pq.read_table(out / "evals" / f"{name}-s{seed}" / "generations.parquet").to_pylist()
                if g["benchmark"] in benchmarks.split(",")]
        assert live == [(g["benchmark"], g["response"], g["reward"])
                        for g in pq.read_table(fresh / "generations.parquet").to_pylist()]
        assert len({response for _, response, _ in live}) > 1
    assert (out / "evals" / "dft-s0" / "generations.parquet").read_bytes() != (
        out / "evals" / "base-s0" / "generations.parquet").read_bytes()  # the weights did change

    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {(r["model"], r["seed"], r["benchmark"]) for r in rows} == {
        (m, s, b) for m in ("base", "dft") for s in ("0", "1") for b in ("test-id", "test-names")}
    assert all(r["benchmark"] in ("test-id", "test-names") and r["problems"] == "6" and 0 <= float(r["avg@2"]) <= 1
               for r in rows)
    assert all(float(r["train_seconds"]) > 0 for r in rows if r["model"] != "base")
    for r in rows:  # the CSV holds what each evaluation wrote
        res = json.loads((out / "evals" / f"{r['model']}-s{r['seed']}" / "results.json").read_text())
        assert float(r["avg@2"]) == pytest.approx(res["benchmarks"][r["benchmark"]]["avg@2"])
    for seed in (0, 1):  # the budget
        assert json.loads((out / "runs" / f"dft-s{seed}" / "train_summary.json").read_text())["steps"] == 3
    report = (out / "report.md").read_text()
    table = [line for line in report.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| model | setting | test-id avg@2 | test-names avg@2")
    assert [line.split(" | ")[:2] for line in table[1:3]] == [["| base", "–"], ["| dft", "lr 0.0002, batch 4"]]
    assert report.count("**") >= 2 and " ± " in report and "| 2 |" in table[1]
    for png in ("accuracy.png", "training.png", "forgetting.png"):
        assert (out / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| base |" in result.stdout
    # differences against the base (no sft here) with paired bootstrap intervals, the same figures in differences.csv
    assert "## Differences against base (points, model minus base)" in report
    assert "paired bootstrap (2000 resamples of the problems and the seeds together" in report
    differences = list(csv.DictReader((out / "differences.csv").open()))
    assert {(d["model"], d["benchmark"], d["metric"], d["method"], d["seeds"], d["problems"]) for d in differences} == {
        ("dft", b, m, "paired bootstrap", "2", "6") for b in ("test-id", "test-names") for m in ("avg@2", "pass@2")}
    for d in differences:
        mean = {m: sum(float(r[d["metric"]]) for r in rows if r["model"] == m and r["benchmark"] == d["benchmark"]) / 2
                for m in ("base", "dft")}
        assert float(d["difference"]) == pytest.approx(mean["dft"] - mean["base"], abs=1e-6)
        assert float(d["low"]) <= float(d["difference"]) <= float(d["high"])
    # the forgetting panel and the entropy column: every model's held-out NLL and its samples' entropy
    panel = report[report.index("## Forgetting and entropy"):]
    assert f"`{heldout}` (2 documents" in panel and "| base | " in panel and "| dft | " in panel
    assert all(0 < float(r["entropy"]) for r in rows)

    # resumable: a second run finds everything done and starts nothing
    before = {p: p.stat().st_mtime_ns for p in (out / "evals").rglob("results.json")}
    from tests.test_bad_input import run_alone  # in this process: what is finished starts no engine

    ran = (out / "stages.jsonl").read_text()
    code, err = run_alone("compare", ["--data", str(vllm_dataset), "--out", str(out), *ARGS, "--heldout-text",
                                      str(heldout)], capfd)
    assert code == 0, err[-2000:]
    assert {p: p.stat().st_mtime_ns for p in (out / "evals").rglob("results.json")} == before
    assert (out / "stages.jsonl").read_text() == ran  # no stage ran again
    assert (out / "report.md").read_text() == report  # the same report, written again




def test_report_table_marks_the_best_mean_per_column():
    rows = [{"model": m, "benchmark": b, "avg@4": v} for m, b, v in [
        ("base", "a", 0.2), ("base", "a", 0.4), ("dft", "a", 0.5), ("dft", "a", 0.7), ("base", "b", 0.3), ("dft", "b", 0.1)]]
    table = format_report_table(rows, ["base", "dft"], ["a", "b"], "avg@4").splitlines()
    assert table[2] == "| base | 30.0 ± 14.1 | **30.0** | 2 |"  # b: one seed each, so no "± 0.0"
    assert table[3] == "| dft | **60.0 ± 14.1** | 10.0 | 2 |"


def test_the_accuracy_plot_shows_gains_with_their_paired_intervals(tmp_path):
    from offline_rl.experiments.intervals import seeds_t

    acc = {("base", "test-id"): [0.30, 0.31, 0.29], ("dft", "test-id"): [0.40, 0.41, 0.39],
           ("base", "test-items"): [0.10, 0.12, 0.08], ("dft", "test-items"): [0.11, 0.13, 0.09],
           ("rft", "test-id"): [0.20, 0.21, 0.19]}
    rows = [{"model": m, "seed": i, "benchmark": b, "avg@4": v} for (m, b), vs in acc.items() for i, v in enumerate(vs)]
    gains = {(m, b): seeds_t(acc[m, b], acc["base", b]) for m, b in acc if m != "base"}
    for path, given in ((tmp_path / "intervals.png", gains), (tmp_path / "band.png", None)):
        plot_accuracy(rows, ["base", "dft", "rft"], ["test-id", "test-items"], "avg@4", path, given)
        assert path.read_bytes()[:4] == b"\x89PNG"
    # 30 models on 6 benchmarks: one benchmark per row, not 6 panels side by side 90 inches wide
    many = [f"m{i}" for i in range(29)]
    benches = [f"b{j}" for j in range(6)]
    rows = [{"model": m, "seed": 0, "benchmark": b, "avg@4": 0.5} for m in ["base", *many] for b in benches]
    plot_accuracy(rows, ["base", *many], benches, "avg@4", tmp_path / "many.png")
    width, height = (int.from_bytes((tmp_path / "many.png").read_bytes()[at:at + 4], "big") for at in (16, 20))
    assert width < 2200 < height


def test_each_model_after_rl_is_drawn_in_its_learners_color_and_every_learner_in_its_own():
    from offline_rl.experiments.plots import _color

    learners = [f"l{i}" for i in range(14)]
    models = ["base", *learners, *(f"{m}+rl" for m in ["base", *learners])]
    same_as = {f"{m}+rl": m for m in ["base", *learners]}
    assert [_color(f"{m}+rl", models, same_as) for m in learners] == [_color(m, models, same_as) for m in learners]
    assert len({str(_color(m, models, same_as)) for m in learners}) == 14  # tab20 beyond 9 learners, not a repeat
    assert _color("base+rl", models, same_as) == _color("base", models) == "0.6"
    assert _color("l3", models) != _color("l3+rl", models)  # without same_as, NAME+rl is a model of its own


def test_runs_file_recipes_and_overrides(tmp_path):
    from rollout.runtime import UsageError

    assert Run("dft", "dft").lr(2e-4) == 2e-4 and Run("dpo", "dpo").lr(2e-4) == 2e-05  # DPO's recipe: a tenth
    runs_file = tmp_path / "runs.yaml"
    runs_file.write_text("- {name: dpo, learner: dpo, flags: {beta: 0.5, lr_scale: 1}}\n"
                         "- {name: dft_seq, learner: dft, data: demonstrations, flags: {weighting: sequence}}\n"
                         "- {name: grpo, learner: grpo, rounds: 100}\n")
    cfg = CompareConfig(out=str(tmp_path / "cmp"), runs=str(runs_file), steps=100, batch_size=16, seeds="0")
    runs = parse_runs(cfg)
    assert [(r.name, r.learner, r.data, r.rounds) for r in runs] == [
        ("dpo", "dpo", "dataset", None), ("dft_seq", "dft", "demonstrations", None), ("grpo", "grpo", "dataset", 100)]
    stages = {s.name: s for s in plan(cfg, tmp_path, tmp_path / "data", runs, [0], tmp_path / "demos")}
    dpo_train, dpo_learner = stages["train dpo s0"].configs
    assert (dpo_train.lr, dpo_learner.beta) == (2e-4, 0.5)  # the run's own rate and beta replace the recipe
    seq_train, seq_learner = stages["train dft_seq s0"].configs
    assert seq_train.data == str(tmp_path / "demos") and seq_learner.weighting == "sequence"
    for text, message in (("- {name: x, learner: ddpg}", "known learner"), ("- {name: x, learner: dft, flags: {beta: 1}}", "beta"),
                          ("- {name: x, learner: dft, rounds: 3}", "do not split"), ("- {name: x, learner: dft, colour: 1}", "unknown key"),
                          ("- {name: x, learner: dft, n: 8}", "needs rounds"), ("- {name: x, learner: dft, batch_size: round}", "needs rounds"),
                          ("- {name: x, learner: dft, batch_size: 0}", "whole number")):
        runs_file.write_text(text + "\n")
        with pytest.raises(UsageError, match=message):
            parse_runs(cfg)


def test_a_failed_stage_is_reported_and_the_rest_still_run(tmp_path, tiny_model_dir):
    from rollout.dataset import DatasetWriter
    from tests.conftest import make_rows

    # every sample right: rft trains, dpo has no pairs and fails
    writer = DatasetWriter(tmp_path / "data", {"model": str(tiny_model_dir)})
    writer.write_shard(make_rows(reward=lambda p, i: 1.0))
    writer.finish()
    out = tmp_path / "cmp"
    result = run_bin("compare", "--data", str(tmp_path / "data"), "--out", str(out), "--learners", "dpo,rft",
                     "--seeds", "0", "--benchmarks", "test-id", "--problems", "2", "--k", "1", "--max-tokens", "8",
                     "--steps", "1", "--batch-size", "2", "--backend", "hf", "--heldout-text", "none")
    assert result.returncode == 1  # stages failed: not bad input
    assert result.stderr.strip().splitlines()[-1].startswith("compare: error: 1 stage(s) failed, the report holds the rest: train dpo s0 failed")
    assert "no preference pairs" in result.stderr
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {r["model"] for r in rows} == {"base", "rft"}
    assert not (out / "evals" / "dpo-s0").exists()
    assert "| dpo | lr 2e-05, batch 2 | – |" in (out / "report.md").read_text()


def _report_without_times(out) -> list[str]:
    """report.md and results.csv less what differs between two runs of the same comparison: times and OUT."""
    import re

    report = (out / "report.md").read_text().replace(str(out), "OUT")
    report = re.sub(r" \(collected in [0-9.]+ min\)", "", report)
    report = re.sub(r"## Stage times.*?\n## ", "## ", report, flags=re.S)
    lines = [re.sub(r"\| [0-9]+( \(shared\))? \| [0-9]+ \|$", "| (s) | (s) |", line)  # the budget table's times
             for line in report.splitlines() if not line.startswith("Time:")]
    rows = [{k: v for k, v in r.items() if k != "train_seconds"} for r in csv.DictReader((out / "results.csv").open())]
    return lines + [json.dumps(rows)]


@pytest.mark.slow
def test_compare_killed_during_its_collect_reruns_to_the_uninterrupted_report(tmp_path):
    from rollout.dataset import read_manifest
    from tests.test_collect import kill, start_paused

    runs = tmp_path / "runs.yaml"
    runs.write_text("- {name: rft, learner: rft}\n- {name: rft_x2, learner: rft, rounds: 2}\n")
    args = ["--prompts", "4", "--runs", str(runs), "--seeds", "0", "--benchmarks", "test-id", "--problems", "2",
            "--k", "1", "--max-tokens", "16", "--steps", "2", "--batch-size", "2", "--backend", "hf",
            "--heldout-text", "none"]
    whole = run_bin("compare", "--out", str(tmp_path / "whole"), *args)
    assert whole.returncode == 0, whole.stderr[-2000:]
    # one engine for the collection, the evaluations and the rounds' own sampling (bin/iterate in this process)
    stages = [json.loads(line) for line in (tmp_path / "whole" / "stages.jsonl").read_text().splitlines()]
    assert [r["command"] for r in stages] == ["collect", "eval", "train", "eval", "iterate", "eval"]
    assert stages[-1]["engine_starts"] == 1 and stages[-1]["engine_loads"] >= 3

    out = tmp_path / "killed"
    # compare is SIGKILLed while its collect stage is held after its first shard (collect's own kill test covers
    # every other point of a collection)
    for point, shards in (("collect:shard-1", ["shard-00000.parquet"]),):
        flag = tmp_path / point.replace(":", "-")
        compare = start_paused("compare", ["--out", str(out), *args], point, flag)
        assert int(flag.read_text()) == compare.pid  # the stage runs in compare's process: it dies with it
        kill(compare)
        manifest = read_manifest(out / "data")
        assert manifest["complete"] is False and manifest["shards"] == shards

    again = run_bin("compare", "--out", str(out), *args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert read_manifest(out / "data")["counts"] == read_manifest(tmp_path / "whole" / "data")["counts"]
    assert "16 responses to 4 prompts" in (out / "report.md").read_text()
    assert _report_without_times(out) == _report_without_times(tmp_path / "whole")


def test_iterated_learners_get_the_same_budget_of_steps_and_samples_in_rounds(tmp_path):
    runs = [Run("rft", "rft"), Run("rft_x4", "rft", rounds=4), Run("grpo", "grpo", rounds=100),
            Run("grpo8", "grpo", rounds=100, n=8, batch_size="round"), Run("sft64", "sft", batch_size=64)]
    cfg = CompareConfig(out=str(tmp_path), steps=100, batch_size=16, seeds="0")
    stages = {s.name: s for s in plan(cfg, tmp_path, tmp_path / "data", runs, [0])}
    offline, iterated, online = stages["train rft s0"], stages["train rft_x4 s0"], stages["train grpo s0"]
    assert (offline.command, iterated.command, online.command) == ("train", "iterate", "iterate")
    assert offline.configs[0].steps == 100
    for stage, rounds in ((iterated, 4), (online, 100)):  # the dataset's prompts and sampling, shared out over the rounds
        cfg_rounds = stage.configs[0]
        assert (cfg_rounds.rounds, cfg_rounds.steps, cfg_rounds.train.batch_size) == (rounds, 100, 16)
        assert cfg_rounds.sample_like == str(tmp_path / "data") and not cfg_rounds.round_batches
    recipe = stages["train grpo8 s0"]  # GRPO's recipe: its own group size, every sample of a round in its step
    assert (recipe.configs[0].collect.n, recipe.configs[0].round_batches, recipe.given) == (8, True, frozenset({"n"}))
    assert stages["train sft64 s0"].configs[0].batch_size == 64  # a run's own batch


def test_the_demonstrations_are_the_worlds_solutions_of_the_datasets_own_prompts(tmp_path):
    """As documented: sft trains on the world's reference solutions of --data's prompts (bin/import --prompts-of), not
    on all 3,000 of the split, so that it sees the prompts dft sees."""
    out, data = tmp_path / "cmp", tmp_path / "data"
    cfg = CompareConfig(out=str(out), data=str(data), learners="sft,dft", seeds="0")
    stages = {s.name: s for s in plan(cfg, out, data, parse_runs(cfg), [0], out / "demonstrations")}
    imported = stages["import"].configs[0]
    assert (imported.source, imported.prompts_of, imported.prompts) == ("world:train", str(data), None)
    assert stages["train sft s0"].configs[0].data == str(out / "demonstrations")
    assert stages["train dft s0"].configs[0].data == str(data)


@pytest.mark.parametrize("entry, message", [
    ("{name: x, learner: dft, data: nowhere}", "data nowhere: no such dataset directory"),
    ("{name: x, learner: dft, flags: {micro_batch_size: 3}}", "--batch-size 32 is not a multiple"),
    ("{name: x, learner: ppo, data: demonstrations}", "ppo needs the sampling policy's log-probs"),
])
def test_a_bad_runs_file_is_refused_at_once_with_no_engine_started_and_nothing_written(
        tmp_path, monkeypatch, capfd, entry, message):
    import time

    from offline_rl.experiments import compare
    from rollout.runtime import run

    started = []
    monkeypatch.setattr(compare, "LiveEngine", lambda *args, **kwargs: started.append(args))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs.yaml").write_text(f"- {{name: dft, learner: dft}}\n- {entry}\n")  # the second run is wrong
    start = time.time()
    with pytest.raises(SystemExit) as exit_info:
        run(lambda _: compare.main(["--out", "cmp", "--runs", "runs.yaml"]), "compare")
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert exit_info.value.code == 2 and len(lines) == 1 and message in lines[0], lines
    assert time.time() - start < 5 and started == []
    assert [p.name for p in tmp_path.iterdir()] == ["runs.yaml"]  # no OUT, no collection, no log


def test_each_stage_logs_a_command_line_that_parses_back_to_its_configs(tmp_path):
    """A stage's log starts with its command line: parsed by that command, it gives the stage's configs again,
    bin/iterate's stage configs (its collection's, training's and evaluation's) included."""
    import shlex

    from offline_rl.evaluate import EvalConfig
    from offline_rl.experiments.iterate import IterateConfig
    from offline_rl.learners import LEARNER_CONFIGS
    from offline_rl.train import TrainConfig
    from rollout.collect import CollectConfig
    from rollout.demonstrations import ImportConfig
    from rollout.runtime import command_line, parse_config

    runs = [Run("dpo", "dpo", flags=(("beta", 0.2),)), Run("sft", "sft", data="demonstrations"),
            Run("grpo8", "grpo", rounds=4, n=8, batch_size="round", flags=(("view", "groups"), ("warmup_ratio", 0.1)))]
    cfg = parse_config(CompareConfig, ["--out", str(tmp_path), "--steps", "8", "--k", "2", "--temperature", "0.7",
                                       "--backend", "hf", "--seeds", "0"], "compare", "")
    parsers = {"collect": CollectConfig, "import": ImportConfig, "eval": EvalConfig,
               "train": (TrainConfig, *LEARNER_CONFIGS), "iterate": (IterateConfig, *LEARNER_CONFIGS)}
    stages = plan(cfg, tmp_path, tmp_path / "data", runs, [0], tmp_path / "demonstrations")
    assert {s.command for s in stages} == set(parsers)
    for stage in stages:
        words = shlex.split(command_line(stage.command, *stage.configs))
        parsed = parse_config(parsers[words[0].removeprefix("bin/")], words[1:], "check", "")
        parsed = parsed if isinstance(parsed, tuple) else (parsed,)
        assert parsed[0] == stage.configs[0], stage.name
        if len(stage.configs) > 1:  # the learner's own settings
            assert stage.configs[1] in parsed[1:], stage.name
    rounds = next(s.configs[0] for s in stages if s.command == "iterate")
    assert (rounds.collect.n, rounds.train.warmup_ratio, rounds.train.view) == (8, 0.1, "groups")
    assert rounds.collect.backend == rounds.evaluation.backend == "hf"
    evaluation = next(s.configs[0] for s in stages if s.command == "eval")
    assert (evaluation.k, evaluation.temperature, evaluation.backend) == (2, 0.7, "hf")  # the comparison's flags



def test_an_evaluation_saved_with_other_settings_is_not_finished(tmp_path):
    """--force with a new --k (or any evaluation setting) evaluates again instead of reporting the old k's results;
    a saved evaluation without a setting newer than it counts that setting at its default."""
    from rollout.runtime import parse_config, save_config

    def stages(*flags):
        cfg = parse_config(CompareConfig, ["--out", str(tmp_path), "--backend", "hf", "--seeds", "0", *flags],
                           "compare", "")
        return [s for s in plan(cfg, tmp_path, tmp_path / "data", [Run("sft", "sft")], [0], None)
                if s.command == "eval"]

    base = stages("--k", "2")[0]
    base.done.parent.mkdir(parents=True)
    save_config(base.configs[0], base.done.parent / "eval_config.json")
    base.done.write_text("{}")
    assert base.finished() and stages("--k", "2", "--force")[0].finished()
    base = stages("--k", "2", "--force")[0]
    assert not stages("--k", "4", "--force")[0].finished()
    assert stages("--k", "4", "--force")[0].configs[0].force  # it may replace the old k's evaluation
    saved = json.loads((base.done.parent / "eval_config.json").read_text())
    planned, default = base.configs[0], type(base.configs[0])()
    for name, finished in (("max_model_len", True), ("heldout_text", False)):  # at its default; not (world:pretrain)
        assert (getattr(planned, name) == getattr(default, name)) == finished
        (base.done.parent / "eval_config.json").write_text(json.dumps({k: v for k, v in saved.items() if k != name}))
        assert base.finished() == finished, name

class FakeEngine:
    """Records what the live engine asks of it; ``device``: False (CPU), "close" (an accelerator engine that cannot
    sleep) or "sleep" (one with vLLM's sleep mode)."""

    def __init__(self, model, log, device=False):
        self.log, self.holds_device_memory, self.can_sleep = log, bool(device), device == "sleep"
        log.append(("start", model))

    def load_weights(self, model):
        if "broken" in model:
            raise OSError(f"cannot read {model}")
        self.log.append(("load", model))

    def reset_cache(self):
        self.log.append(("reset",))

    def sleep(self):
        self.log.append(("sleep",))

    def wake_up(self):
        self.log.append(("wake",))

    def close(self):
        self.log.append(("close",))


@pytest.mark.parametrize("device", [False, "close", "sleep"])
def test_the_live_engine_starts_once_loads_in_place_and_makes_room_on_an_accelerator(monkeypatch, device):
    from rollout import engines

    log = []
    monkeypatch.setattr(engines, "start_engine", lambda flags, model: FakeEngine(model, log, device))
    live = engines.LiveEngine(flags=None)
    assert live.hold("base") is not None and live.last == "started"
    assert live.hold("base") is None and live.last == "held"  # the same weights: only the prefix cache emptied
    live.hold("dft-s0")
    assert live.last == "loaded in place" and live.model == "dft-s0"
    with pytest.raises(OSError):
        live.hold("broken")
    assert live.model is None  # half-loaded weights are nobody's: the next hold loads again
    live.hold("dft-s0")
    live.make_room()  # before training in this process
    live.make_room()  # twice: nothing more
    live.hold("dft-s0")  # the same model after sleeping: its weights were dropped, so loaded again
    live.close()
    middle = [("load", "dft-s0"), ("load", "dft-s0")]
    if device == "close":  # the training gets the accelerator's memory: closed, then started again
        assert log == [("start", "base"), ("reset",), *middle, ("close",), ("start", "dft-s0"), ("close",)]
    elif device == "sleep":  # put to sleep, then woken and given the weights
        assert log == [("start", "base"), ("reset",), *middle, ("sleep",), ("wake",), ("load", "dft-s0"), ("close",)]
    else:  # on CPU nothing changes
        assert log == [("start", "base"), ("reset",), *middle, ("reset",), ("close",)]


@pytest.mark.parametrize("device", ["sleep", "close"])
def test_rounds_hand_the_accelerator_to_each_training_and_take_the_new_weights_after(monkeypatch, tmp_path, device):
    """bin/iterate with a stand-in engine on a stand-in accelerator, collections and trainings that only record:
    before every training the engine sleeps (or closes), after it the engine holds the round's new weights."""
    import json

    from offline_rl.experiments import iterate
    from rollout import engines

    log = []
    monkeypatch.setattr(engines, "start_engine", lambda flags, model: FakeEngine(model, log, device))

    def collect(cfg, context=None):
        log.append(("collect", cfg.model))
        Path(cfg.out).mkdir(parents=True)
        (Path(cfg.out) / "manifest.json").write_text(json.dumps({
            "complete": True, "counts": {"prompts": 2, "responses": 4}, "wall_seconds": 0.0,
            "summary": {"mean_response_tokens": 3.0, "pass_rate": 0.5}}))

    def train(cfg, learner_cfg=None, context=None):
        out = Path(cfg.out)
        log.append(("train", str(out)))
        k = int(out.parent.name.removeprefix("round-"))
        (out / "checkpoints" / f"step-{cfg.steps * k}").mkdir(parents=True)
        (out / "model.safetensors").write_text(out.parent.name)
        (out / "metrics.jsonl").write_text(json.dumps({"step": k, "loss": 0.0}) + "\n")
        (out / "train_summary.json").write_text(json.dumps({"seconds": 0.0, "examples": 4, "first_step": k - 1,
                                                              "last_step": k}))

    monkeypatch.setattr(iterate, "run_collect", collect)
    monkeypatch.setattr(iterate, "run_train", train)
    cfg = iterate.IterateConfig(out=str(tmp_path / "rounds"), rounds=2, steps=2, prompts_per_round=4)
    iterate.run_iterate(cfg)
    # each model by its round ("round-1" for OUT/round-1/train), the shipped one by its folder's name
    named = [(what, *(Path(x).parent.name if "round-" in x else Path(x).name for x in rest)) for what, *rest in log]
    if device == "sleep":  # asleep for each training, woken and given the new weights after
        assert named == [("start", "base-model"), ("collect", "base-model"), ("sleep",), ("train", "round-1"),
                         ("wake",), ("load", "round-1"), ("collect", "round-1"), ("sleep",), ("train", "round-2"),
                         ("close",)]
    else:  # closed for each training, started again on the new weights
        assert named == [("start", "base-model"), ("collect", "base-model"), ("close",), ("train", "round-1"),
                         ("start", "round-1"), ("collect", "round-1"), ("close",), ("train", "round-2")]


COMMITTED = {  # the committed comparisons, each in its new spelling (results/README.md gives them)
    "embedded": "bin/compare --out results/embedded --seeds 0,1,2 --steps 100 --batch-size 16",
    "embedded-long": "bin/compare --out results/embedded-long --data results/embedded/data --learners sft,rft,dft,adft "
                     "--seeds 0,1,2 --steps 250 --batch-size 32",
    "embedded-demos": "bin/compare --out results/embedded-demos --data results/embedded/data "
                      "--runs results/embedded-demos/runs.yaml --seeds 0,1,2 --steps 100 --batch-size 16",
    "embedded-adft": "bin/compare --out results/embedded-adft --learners adft --benchmarks test-id,test-ood "
                     "--seeds 0,1,2 --steps 100 --batch-size 16",
    "embedded-rounds": "bin/compare --out results/embedded-rounds --runs results/embedded-rounds/runs.yaml "
                       "--prompts 1600 --seeds 0,1,2 --steps 100 --batch-size 16",
}


@pytest.mark.parametrize("name", COMMITTED)
def test_the_committed_comparisons_plan_the_same_runs_under_their_new_spellings(name, monkeypatch):
    """Each committed comparison's new command line means what its saved compare_config.json (old spellings) meant:
    the same budget, data, seeds and evaluation, and the same runs with the same flags and rounds."""
    import re
    import shlex
    from pathlib import Path

    from rollout.runtime import parse_config

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    readme = re.sub(r"\s+", " ", (root / "results" / "README.md").read_text().replace("\\\n", " "))
    assert COMMITTED[name] in readme
    cfg = parse_config(CompareConfig, shlex.split(COMMITTED[name])[1:], "compare", "")
    old = json.loads((root / "results" / name / "compare_config.json").read_text())
    evaluation = cfg.evaluation
    assert (cfg.steps, cfg.batch_size, cfg.prompts, evaluation.problems, cfg.data, cfg.seeds, evaluation.benchmarks,
            evaluation.k, cfg.lr, evaluation.temperature, evaluation.max_tokens) == (
        old["budget_steps"], old["batch_size"], old["collect_limit"], old["eval_limit"], old["data"], old["seeds"],
        old["benchmarks"], old["k"], old["lr"], old["temperature"], old["max_tokens"])
    runs = parse_runs(cfg)
    learners = dict(part.partition("=")[::2] for part in old["learners"].split(","))
    assert {r.name: r.learner for r in runs} == {n: learner or n for n, learner in learners.items()}
    rounds = dict(part.split(":") for part in (old.get("rounds") or "").split(",") if part)
    assert {r.name: r.rounds for r in runs if r.rounds} == {n: int(r) for n, r in rounds.items()}
    flags = {part.split(":")[0].strip(): part.split(":")[1].split()
             for part in (old["learner_args"] or "").split(";") if part.strip()}
    assert {r.name: [x for k, v in r.flags for x in (f"--{k}", str(v))] for r in runs if r.flags} == flags
    on_demonstrations = set(old.get("demonstration_learners", "sft").split(","))
    assert {r.name for r in runs if r.data == "demonstrations"} == on_demonstrations & set(learners)
    stages = plan(cfg, Path(cfg.out), Path(cfg.data or f"{cfg.out}/data"), runs, [0, 1, 2])
    assert sum(s.command in ("train", "iterate") for s in stages) == 3 * len(runs)


def test_every_model_is_judged_again_after_the_same_rl(tmp_path, tiny_model_dir):
    """--after-rl on a tiny budget: the base and each run followed by the same GRPO rounds (the dataset's prompts,
    the seed, one rate), evaluated as NAME+rl; the report sets each before and after RL."""
    from offline_rl import embedded
    from offline_rl.experiments.compare import main as compare_main
    from rollout.collect import main as collect_main
    from rollout.dataset import load_offline_dataset

    context = embedded.context()
    collect_main(["--out", str(tmp_path / "data"), "--model", str(tiny_model_dir), "--prompts", "4", "--n", "2",
                  "--max-tokens", "12", "--backend", "hf"], context=context)
    out = tmp_path / "cmp"
    compare_main(["--data", str(tmp_path / "data"), "--out", str(out), "--learners", "sft", "--seeds", "0",
                  "--benchmarks", "test-id", "--problems", "2", "--k", "2", "--max-tokens", "12", "--steps", "2",
                  "--batch-size", "2", "--backend", "hf", "--report-to", "none", "--heldout-text", "none",
                  "--after-rl", "2"], context=context)
    stages = [json.loads(line)["stage"] for line in (out / "stages.jsonl").read_text().splitlines()]
    assert stages == ["import", "eval base s0", "train sft s0", "eval sft s0", "train base+rl s0", "eval base+rl s0",
                      "train sft+rl s0", "eval sft+rl s0"]
    rl = {name: json.loads((out / "runs" / f"{name}+rl-s0" / "iterate_config.json").read_text())
          for name in ("base", "sft")}
    assert rl["sft"]["model"] == str(out / "runs" / "sft-s0") and rl["base"]["model"] == str(tiny_model_dir)
    same = ("learner", "rounds", "steps", "lr", "n", "seed", "round_batches", "source", "prompts_per_round",
            "temperature")
    assert [rl["base"][k] for k in same] == [rl["sft"][k] for k in same] == [
        "grpo", 2, 2, 5e-5, 8, 0, True, "world:train", 1, 1.0]
    prompts = {name: [load_offline_dataset(out / "runs" / f"{name}+rl-s0" / f"round-{k}" / "data")["prompt_id"][0]
                      for k in (1, 2)] for name in ("base", "sft")}
    assert prompts["base"] == prompts["sft"] and prompts["base"][0] != prompts["base"][1]  # the same, shared out
    report = (out / "report.md").read_text()
    section = report[report.index("## Judged again after the same RL (test-id avg@2, %)"):]
    assert "| base | " in section and "| sft | " in section and "Kendall's tau" in section
    assert "| sft+rl | then 2 rounds of GRPO, 1 steps each, lr 5e-05, groups of 8 |" in report
    differences = list(csv.DictReader((out / "differences.csv").open()))
    assert {(d["reference"], d["model"], d["metric"]) for d in differences} >= {
        ("sft", "sft+rl", "avg@2"), ("base", "base+rl", "pass@2"), ("sft", "base+rl", "avg@2")}
