"""Bad input, table-driven, across every command: one line on stderr, exit 2, no traceback, and every file
that existed before is byte-identical afterwards (nothing is created either).

The commands run in-process through the same ``run()`` wrapper as ``bin/*`` (a subprocess each would cost
~1-4 s of imports per row); ``test_cli.py`` keeps a few subprocess checks of the entry points themselves.
"""

from __future__ import annotations

import errno
import json
import shutil
from functools import partial
from pathlib import Path

import pytest

from offline_rl.embedded import world
from offline_rl.embedded.base_model import DEFAULT_BASE_MODEL
from rollout.dataset import DatasetWriter
from rollout.runtime import run
from tests.conftest import make_rows


def _commands():
    from offline_rl import cli, evaluate, train
    from offline_rl.embedded import base_model
    from offline_rl.experiments import compare
    from rollout import collect, demonstrations

    return {
        "collect": partial(collect.main, world=world.load_split, default_model=str(DEFAULT_BASE_MODEL)),
        "import": partial(demonstrations.main, world=world.load_split, default_model=str(DEFAULT_BASE_MODEL)),
        "train": train.main,
        "eval": partial(evaluate.main, default_model=str(DEFAULT_BASE_MODEL)),
        "compare": compare.main,
        "merge": cli.COMMANDS["merge"][1](),
        "rescore": cli.COMMANDS["rescore"][1](),
        "make-base": base_model.main,
    }


def run_command(command: str, args: list[str], capfd) -> tuple[int, str]:
    capfd.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run(lambda _: _commands()[command](args), command)
    return exit_info.value.code, capfd.readouterr().err


def assert_one_line(code: int, stderr: str, *fragments: str) -> None:
    assert code == 2, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def assert_fails_with(code: int, stderr: str, *fragments: str) -> None:
    """Exit 2, no traceback, and the error as the last line (progress and the resolved config may precede it)."""
    assert code == 2, stderr
    assert "Traceback" not in stderr
    last = [line for line in stderr.splitlines() if line.strip()][-1]
    for fragment in fragments:
        assert fragment in last, last


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_model_dir) -> Path:
    """One workspace of good and damaged inputs, shared by every row (each row checks it is left unchanged)."""
    ws = tmp_path_factory.mktemp("bad-input")
    model = str(tiny_model_dir)
    sampled = {"temperature": 1.0, "top_p": 1.0}
    manifests = {"ds-t07": {"sampling": {**sampled, "temperature": 0.7}}, "ds-topp": {"sampling": {**sampled, "top_p": 0.9}},
                 "ds-other-model": {"model": str(DEFAULT_BASE_MODEL)}, "no-sampling": {"sampling": None},
                 "collected": {"model": str(DEFAULT_BASE_MODEL), "identity": {
                     "model": str(DEFAULT_BASE_MODEL), "sampling": {"n": 4, "temperature": 1.0, "top_p": 1.0,
                                                                    "max_tokens": 160, "stop": None}}}}
    for name in ("ds", "ds2", "incomplete", "truncated-manifest", "truncated-shard", "missing-shard", "all-wrong",
                 "no-logprobs", *manifests):
        writer = DatasetWriter(ws / name, {"model": model, "source": {"kind": "world", "split": "train"},
                                           "sampling": sampled, **manifests.get(name, {})})
        rows = make_rows(reward=lambda p, i: 0.0) if name == "all-wrong" else make_rows()
        writer.write_shard([{**r, "behavior_logprobs": []} for r in rows] if name == "no-logprobs" else rows)
        if name != "incomplete":
            writer.finish()
    manifest = (ws / "truncated-manifest" / "manifest.json").read_bytes()
    (ws / "truncated-manifest" / "manifest.json").write_bytes(manifest[: len(manifest) // 2])
    shard = ws / "truncated-shard" / "data" / "shard-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:100])
    (ws / "missing-shard" / "data" / "shard-00000.parquet").unlink()

    (ws / "foreign").mkdir()
    (ws / "foreign" / "thesis.tex").write_text("precious")
    (ws / "file.txt").write_text("a file, not a directory")
    (ws / "latin1.csv").write_bytes("question,answer\nCombien font deux et deux ? Réponse,4\n".encode("latin-1"))
    (ws / "latin1.txt").write_bytes("Frage: {question}\nAntwort (größer):".encode("latin-1"))
    (ws / "latin1.yaml").write_bytes("n: 2\n# größer\n".encode("latin-1"))
    (ws / "types.yaml").write_text("n: four\n")
    (ws / "list.yaml").write_text("n: [1, 2]\n")
    (ws / "lr.yaml").write_text("lr: fast\n")
    (ws / "unknown.yaml").write_text("temprature: 0.7\n")
    (ws / "empty.jsonl").write_text("")
    (ws / "nofield.jsonl").write_text(json.dumps({"q": "1+1", "answer": "2"}) + "\n")
    (ws / "nogold.jsonl").write_text(json.dumps({"question": "1+1", "answer": ""}) + "\n"
                                     + json.dumps({"question": "2+2", "answer": "4"}) + "\n")
    (ws / "broken-model").mkdir()
    (ws / "broken-model" / "config.json").write_text("{not json")
    shutil.copytree(tiny_model_dir, ws / "model")
    shutil.copytree(tiny_model_dir, ws / "truncated-weights")
    weights = ws / "truncated-weights" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    # a training run with a checkpoint: dft, 2 steps
    args = ["--data", str(ws / "ds"), "--out", str(ws / "run"), "--steps", "2", "--batch-size", "2",
            "--save-every", "1"]
    from offline_rl.train import main as train_main

    train_main(["--learner", "dft", *args])
    from rollout.files import release_unused

    release_unused()  # the in-process run's hold on ws/run ends as the process of a real run would
    return ws


TRAIN = ["--data", "{ws}/ds", "--out", "{ws}/new"]
CASES = [
    # collect: ranges, choices, types
    ("collect", ["--out", "{ws}/new", "--prompts", "-1"], "--prompts must be >= 1"),
    ("collect", ["--out", "{ws}/new", "--n", "0"], "--n must be >= 1"),
    ("collect", ["--out", "{ws}/new", "--top-p", "0"], "--top-p must be > 0"),
    ("collect", ["--out", "{ws}/new", "--temperature", "-1"], "--temperature must be >= 0"),
    ("collect", ["--out", "{ws}/new", "--shard-size", "0"], "--shard-size must be >= 1"),
    ("collect", ["--out", "{ws}/new", "--dtype", "float33"], "invalid choice: 'float33'"),
    ("collect", ["--out", "{ws}/new", "--kv-cache-gib", "0"], "--kv-cache-gib must be > 0"),
    ("collect", ["--out", "{ws}/new", "--n", "four"], "invalid int value: 'four'"),
    ("collect", ["--out", "{ws}/new", "--shard", "2/2"], "--shard"),
    ("collect", ["--prompts", "1"], "--out is required"),
    # collect: files
    ("collect", ["--out", "{ws}/new", "--source", "{ws}/missing.jsonl"], "not found"),
    ("collect", ["--out", "{ws}/new", "--source", "{ws}/latin1.csv"], "latin1.csv line 2: not UTF-8"),
    ("collect", ["--out", "{ws}/new", "--prompts", "1", "--template", "{ws}/latin1.txt"], "latin1.txt line 2: not UTF-8"),
    ("collect", ["--out", "{ws}/new", "--prompts", "1", "--template", "{ws}/foreign"], "cannot read"),
    ("collect", ["--out", "{ws}/new", "--prompts", "1", "--template", "nope"], "unknown template"),
    ("collect", ["--out", "{ws}/new", "--prompts", "1", "--template", "chat"], "chat template"),
    ("collect", ["--out", "{ws}/new", "--config", "{ws}/latin1.yaml"], "latin1.yaml line 2: not UTF-8"),
    ("collect", ["--out", "{ws}/new", "--config", "{ws}/types.yaml"], "invalid int value: 'four'"),
    ("collect", ["--out", "{ws}/new", "--config", "{ws}/list.yaml"], "n must be a single int"),
    ("collect", ["--out", "{ws}/new", "--config", "{ws}/unknown.yaml"], "unknown option: temprature"),
    ("collect", ["--out", "{ws}/new", "--source", "{ws}/empty.jsonl"], "no prompts"),
    ("collect", ["--out", "{ws}/new", "--source", "{ws}/nofield.jsonl", "--format", "plain"], "no field 'question'"),
    ("collect", ["--out", "{ws}/new", "--source", "{ws}/nogold.jsonl", "--strict"], "1 rows have no gold"),
    # collect: models and output directories
    ("collect", ["--out", "{ws}/new", "--model", "{ws}/nowhere"], "model not found"),
    ("collect", ["--out", "{ws}/new", "--model", "{ws}/broken-model"], "cannot load model"),
    ("collect", ["--out", "{ws}/new", "--model", "org/typo"], "neither a local directory nor in the Hugging Face cache"),
    ("collect", ["--out", "{ws}/file.txt", "--prompts", "1"], "is a file, not a directory"),
    ("collect", ["--out", "{ws}/foreign", "--prompts", "1"], "not made by collect"),
    ("collect", ["--out", "{ws}/run", "--prompts", "1"], "not made by collect"),
    ("collect", ["--out", "{ws}/ds", "--prompts", "1"], "collected with different"),
    ("collect", ["--out", "{ws}/truncated-manifest", "--prompts", "1"], "manifest.json is damaged"),
    ("collect", ["--out", "{ws}/collected", "--prompts", "1", "--temperature", "0.5", "--force"], "even --force"),
    # train
    ("train", [*TRAIN, "--batch-size", "0"], "--batch-size must be >= 1"),
    ("train", [*TRAIN, "--micro-batch-size", "0"], "--micro-batch-size must be >= 1"),
    ("train", [*TRAIN, "--log-every", "0"], "--log-every must be >= 1"),
    ("train", [*TRAIN, "--lr", "-1"], "--lr must be > 0"),
    ("train", [*TRAIN, "--epochs", "0"], "--epochs must be > 0"),
    ("train", [*TRAIN, "--steps", "-1"], "--steps must be >= 1"),
    ("train", [*TRAIN, "--config", "{ws}/lr.yaml"], "invalid float value: 'fast'"),
    ("train", [*TRAIN, "--learner", "nope"], "unknown learner 'nope'"),
    ("train", ["--learner", "dpo", "--data", "{ws}/all-wrong", "--out", "{ws}/new"], "no preference pairs for dpo: of 3 prompts 0 are all-right, 3 all-wrong"),
    ("train", [*TRAIN, "--learner", "dft", "--beta", "0.5"], "--beta is a flag of dpo, not of dft"),
    ("train", [*TRAIN, "--learner", "rft", "--clip-eps", "0.1"], "--clip-eps is a flag of ppo, grpo, not of rft"),
    ("train", [*TRAIN, "--learner", "dpo", "--pairing", "best"], "invalid choice: 'best'"),
    # ratio learners: exact or refused, on every dataset of --data
    ("train", ["--learner", "ppo", "--data", "{ws}/no-logprobs", "--out", "{ws}/new"], "needs the sampling policy's log-probs"),
    ("train", ["--learner", "ppo", "--data", "{ws}/ds-topp", "--out", "{ws}/new"], "top-p 0.9"),
    ("train", ["--learner", "iwsft", "--data", "{ws}/ds,{ws}/ds-topp", "--out", "{ws}/new"], "--approximate-ratios"),
    ("train", ["--learner", "adft", "--data", "{ws}/ds,{ws}/ds-t07", "--out", "{ws}/new"], "different temperatures"),
    ("train", ["--learner", "ppo", "--data", "{ws}/no-sampling", "--out", "{ws}/new"], "does not record the temperature"),
    ("train", ["--learner", "adft", "--data", "{ws}/ds-other-model", "--model", "{ws}/model", "--out", "{ws}/new"],
     "not by the initial model"),
    ("train", ["--learner", "dpo", "--reference", "behavior", "--data", "{ws}/ds,{ws}/ds-topp", "--out", "{ws}/new"],
     "top-p 0.9"),
    ("train", ["--learner", "dpo", "--reference", "behavior", "--data", "{ws}/ds-t07", "--out", "{ws}/new"],
     "temperature 1"),
    ("train", ["--learner", "rft", "--data", "{ws}/all-wrong", "--out", "{ws}/new"], "pass rate 0.000 (0 accepted of 6"),
    ("train", ["--learner", "dft", "--data", "{ws}/all-wrong", "--out", "{ws}/new"], "pass rate 0.000 (0 accepted of 6"),
    ("train", ["--data", "{ws}/none", "--out", "{ws}/new"], "not an offline dataset"),
    ("train", ["--data", "{ws}/truncated-manifest", "--out", "{ws}/new"], "manifest.json is damaged"),
    ("train", ["--data", "{ws}/truncated-shard", "--out", "{ws}/new"], "shard-00000.parquet is damaged"),
    ("train", ["--data", "{ws}/missing-shard", "--out", "{ws}/new"], "missing from data/"),
    ("train", [*TRAIN, "--model", "{ws}/truncated-weights"], "cannot load model"),
    ("train", [*TRAIN, "--model", "{ws}/broken-model"], "cannot load model"),
    ("train", ["--data", "{ws}/ds", "--out", "{ws}/foreign"], "not made by train"),
    ("train", ["--data", "{ws}/ds", "--out", "{ws}/ds2"], "not made by train"),
    ("train", ["--data", "{ws}/ds", "--out", "{ws}/file.txt"], "is a file, not a directory"),
    ("train", ["--learner", "rft", "--data", "{ws}/ds", "--out", "{ws}/run", "--steps", "2", "--batch-size", "2",
               "--save-every", "1", "--resume"], "different learner ('dft', now 'rft')"),
    ("train", ["--learner", "dft", "--data", "{ws}/ds", "--out", "{ws}/run", "--steps", "4", "--batch-size", "2",
               "--lr", "1e-3", "--save-every", "1", "--resume"], "lr (0.0002, now 0.001); schedule_steps (2, now 4); steps (2, now 4)"),
    ("train", ["--learner", "dft", "--data", "{ws}/ds2", "--out", "{ws}/run", "--steps", "2", "--batch-size", "2",
               "--save-every", "1", "--resume"], "different data"),
    ("train", ["--learner", "dft", "--data", "{ws}/ds", "--out", "{ws}/run", "--steps", "2"], "holds checkpoints"),
    # eval
    ("eval", ["--problems", "0"], "--problems must be >= 1"),
    ("eval", ["--k", "0"], "--k must be >= 1"),
    ("eval", ["--top-p", "1.5"], "--top-p must be <= 1"),
    ("eval", ["--benchmarks", "test-id,mmlu"], "unknown benchmark 'mmlu'"),
    ("eval", ["--benchmarks", "gsm8k"], "--benchmark-dir"),
    ("eval", ["--benchmarks", "gsm8k", "--benchmark-dir", "{ws}/nowhere"], "benchmark dir not found"),
    ("eval", ["--benchmarks", "aime24", "--benchmark-dir", "{ws}"], "holds no aime24_test.jsonl"),
    ("eval", ["--model", "{ws}/foreign"], "not a model checkpoint"),
    ("eval", ["--problems", "1", "--out", "{ws}/file.txt"], "is a file, not a directory"),
    ("eval", ["--problems", "1", "--out", "{ws}/foreign"], "not made by eval"),
    ("eval", ["--problems", "1", "--out", "/sys/kernel/offline-rl-eval"], "cannot create"),  # read-only, even for root
    ("train", [*TRAIN[:2], "--out", "/sys/kernel/offline-rl-train"], "cannot create"),
    ("eval", ["--problems", "1", "--template", "{ws}/latin1.txt"], "not UTF-8"),
    # compare
    ("compare", ["--out", "{ws}/new", "--steps", "0"], "--steps must be >= 1"),
    ("compare", ["--out", "{ws}/new", "--learners", "dft,ddpg"], "--learners 'ddpg': needs a name"),
    ("compare", ["--out", "{ws}/new", "--seeds", "0,one"], "--seeds"),
    ("compare", ["--out", "{ws}/new", "--benchmarks", "mmlu"], "unknown benchmark 'mmlu'"),
    ("compare", ["--out", "{ws}/new", "--runs", "{ws}/nope.yaml"], "no such file"),
    ("compare", ["--out", "{ws}/new", "--data", "{ws}/none"], "not an offline dataset"),
    ("compare", ["--out", "{ws}/new", "--data", "{ws}/incomplete"], "unfinished collection"),
    ("compare", ["--out", "{ws}/foreign"], "not made by compare"),
    # merge
    ("merge", ["--out", "{ws}/ds", "--data", "{ws}/ds"], "one of the inputs"),
    ("merge", ["--out", "{ws}/ds2", "--data", "{ws}/ds"], "not made by merge"),
    ("merge", ["--out", "{ws}/new", "--data", "{ws}/ds,{ws}/ds"], "named twice"),
    ("merge", ["--out", "{ws}/new", "--data", "{ws}/ds,{ws}/missing"], "not an offline dataset"),
    ("merge", ["--out", "{ws}/new", "--data", "{ws}/truncated-manifest"], "damaged"),
    ("merge", ["--data", "{ws}/ds"], "--out"),
    # rescore
    ("rescore", ["--data", "{ws}/missing"], "no such directory"),
    ("rescore", ["--data", "{ws}/foreign"], "not an offline dataset"),
    ("rescore", ["--data", "{ws}/truncated-manifest"], "unreadable manifest"),
    ("rescore", ["--data", "{ws}/missing-shard"], "missing from data/"),
    ("rescore", ["--data", "{ws}/truncated-shard"], "unreadable shard"),
    ("rescore", ["--data", "{ws}/ds", "--deadline", "0"], "--deadline must be > 0"),
    # make-base
    ("make-base", ["--out", "{ws}/new", "--steps", "0"], "--steps must be >= 1"),
    ("make-base", ["--out", "{ws}/foreign"], "not made by make-base"),
]


@pytest.mark.parametrize("command,args,fragment", CASES, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(CASES)])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(ws, capfd, monkeypatch, command, args, fragment):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # org/typo: refused at once, not after the hub client's retries
    before = snapshot(ws)
    code, stderr = run_command(command, [a.format(ws=ws) for a in args], capfd)
    assert_one_line(code, stderr, fragment)
    assert snapshot(ws) == before


def test_the_table_covers_every_writer_and_the_listed_classes():
    assert len(CASES) >= 40
    assert {c for c, _, _ in CASES} >= {"collect", "train", "eval", "compare", "merge", "rescore"}


# ---------------------------------------------------------------- a full disk

def _disk_full(path):
    return OSError(errno.ENOSPC, "No space left on device", str(path))


def test_disk_full_during_collect_is_one_line_and_resumes(tmp_path, tiny_model_dir, capfd, monkeypatch):
    import rollout.dataset
    from rollout.dataset import read_manifest, read_rows

    out = tmp_path / "data"
    args = ["--out", str(out), "--model", str(tiny_model_dir), "--backend", "hf", "--prompts", "4", "--n", "1",
            "--max-tokens", "8", "--shard-size", "2"]
    real = rollout.dataset.atomic_write_bytes

    def second_shard_fails(path, data):
        if path.name == "shard-00001.parquet":
            raise _disk_full(path)
        real(path, data)

    monkeypatch.setattr(rollout.dataset, "atomic_write_bytes", second_shard_fails)
    code, stderr = run_command("collect", args, capfd)
    assert_fails_with(code, stderr, "no space left on device", "shard-00001.parquet")
    manifest = read_manifest(out)
    assert manifest["complete"] is False and manifest["shards"] == ["shard-00000.parquet"]  # nothing to trust
    assert not (out / "data" / "shard-00001.parquet").exists()

    monkeypatch.setattr(rollout.dataset, "atomic_write_bytes", real)
    code, _ = run_command("collect", args, capfd)  # space again: the same command resumes
    assert code == 0
    assert read_manifest(out)["complete"] is True
    assert sorted(r["prompt_id"] for r in read_rows(out, ["prompt_id"])) == [p.id for p in world.load_split("train")[:4]]


def test_disk_full_during_the_final_save_of_train_leaves_no_model(tmp_path, tiny_model_dir, capfd, monkeypatch):
    from transformers import PreTrainedModel

    DatasetWriter(tmp_path / "ds", {"model": str(tiny_model_dir)}).write_shard(make_rows())
    real = PreTrainedModel.save_pretrained

    def fails_midway(self, directory, *args, **kwargs):
        real(self, directory, *args, **kwargs)  # the weights' bytes are written, then the disk fills
        raise _disk_full(Path(directory) / "model.safetensors")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", fails_midway)
    out = tmp_path / "run"
    code, stderr = run_command("train", ["--learner", "rft", "--data", str(tmp_path / "ds"), "--out", str(out),
                                         "--steps", "1", "--batch-size", "2"], capfd)
    assert_fails_with(code, stderr, "no space left on device")
    assert not (out / "config.json").exists() and not (out / "model.safetensors").exists()  # does not load as a model
    assert not (out / "train_summary.json").exists()  # nor count as a finished training


def test_disk_full_during_eval_leaves_no_results(tmp_path, tiny_model_dir, capfd, monkeypatch):
    import offline_rl.evaluate

    def fails(path, generations):
        raise _disk_full(path)

    monkeypatch.setattr(offline_rl.evaluate, "write_generations", fails)
    code, stderr = run_command("eval", ["--model", str(tiny_model_dir), "--benchmarks", "test-id", "--problems", "2",
                                        "--k", "1", "--max-tokens", "4", "--backend", "hf", "--out",
                                        str(tmp_path / "ev")], capfd)
    assert_fails_with(code, stderr, "no space left on device", "generations.parquet")
    assert not (tmp_path / "ev" / "results.json").exists()  # compare would not take it as finished


def test_disk_full_during_import_is_one_line_and_the_same_command_resumes(tmp_path, tiny_model_dir, capfd, monkeypatch):
    import rollout.dataset
    from rollout.dataset import read_manifest, read_rows

    args = ["--source", "world:train", "--model", str(tiny_model_dir), "--prompts", "6", "--shard-size", "2"]
    whole = tmp_path / "whole"
    assert run_command("import", [*args, "--out", str(whole)], capfd)[0] == 0
    out = tmp_path / "data"
    real = rollout.dataset.atomic_write_bytes

    def second_shard_fails(path, data):
        if path.name == "shard-00001.parquet":
            raise _disk_full(path)
        real(path, data)

    monkeypatch.setattr(rollout.dataset, "atomic_write_bytes", second_shard_fails)
    code, stderr = run_command("import", [*args, "--out", str(out)], capfd)
    assert_fails_with(code, stderr, "no space left on device", "run the same command again")
    assert read_manifest(out)["complete"] is False
    monkeypatch.setattr(rollout.dataset, "atomic_write_bytes", real)
    assert run_command("import", [*args, "--out", str(out)], capfd)[0] == 0  # space again: the same command
    assert read_rows(out) == read_rows(whole) and read_manifest(out)["counts"] == read_manifest(whole)["counts"]
