"""bin/export: TRL-ready rows that TRL's own trainers take for a step; dataset cards that load with no argument."""

import json

import pytest

from offline_rl import export
from offline_rl.views import make_pairs
from rollout.dataset import COLUMNS, load_offline_dataset, read_manifest, read_rows
from tests.conftest import run_bin
from tests.test_cli import assert_one_line_usage_error


@pytest.fixture(scope="module")
def exported(vllm_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    for fmt in export.FORMATS:
        export.main(["--format", fmt, str(vllm_dataset), str(root / fmt)])
    return root


def test_exports_follow_the_learners_views(exported, vllm_dataset):
    import datasets

    rows = read_rows(vllm_dataset)
    sft = datasets.load_dataset(str(exported / "trl-sft"))["train"]  # the card names the data: no argument
    accepted = [r for r in rows if r["reward"] == 1.0 and r["finish_reason"] != "length"]
    assert sft.num_rows == len(accepted) > 0
    assert sorted(sft["completion"]) == sorted(r["response"] for r in accepted)
    assert {(r["prompt_id"], r["prompt"]) for r in sft} <= {(r["prompt_id"], r["prompt"]) for r in rows}

    dpo = datasets.load_dataset(str(exported / "trl-dpo"))["train"]
    from offline_rl.views import sampled_examples

    pairs = make_pairs(sampled_examples(load_offline_dataset(vllm_dataset), accepted_only=False)[0], "one")
    assert dpo.num_rows == len(pairs) > 0
    reward = {(r["prompt_id"], r["response"]): r["reward"] for r in rows}
    for r in dpo:  # chosen right, rejected wrong, never the same text
        assert reward[r["prompt_id"], r["chosen"]] == 1.0 and reward[r["prompt_id"], r["rejected"]] == 0.0
        assert r["chosen"] != r["rejected"]

    grpo = datasets.load_dataset(str(exported / "trl-grpo"))["train"]
    assert sorted(grpo["prompt_id"]) == sorted({r["prompt_id"] for r in rows})
    gold = {r["prompt_id"]: r["gold"] for r in rows}
    assert all(gold[r["prompt_id"]] == r["answer"] for r in grpo)
    record = json.loads((exported / "trl-dpo" / "export.json").read_text())
    assert record["rows"] == dpo.num_rows and record["pairing"] == "one"


@pytest.mark.slow
def test_one_step_of_each_trl_trainer_on_the_exports(exported, tiny_model_dir, tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    done = subprocess.run([sys.executable, str(ROOT / "tests" / "trl_step.py"), str(exported), str(tiny_model_dir),
                           str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert {name: r["steps"] for name, r in result.items()} == {"sft": 1, "dpo": 1, "grpo": 1}
    assert result["sft"]["max_weight_change"] > 0 and result["dpo"]["max_weight_change"] > 0


def test_dataset_card_loads_with_no_argument_and_says_what_the_manifest_says(vllm_dataset, tmp_path):
    import shutil

    import datasets

    from rollout.cards import card_fields
    from rollout.rescore import rescore

    assert (vllm_dataset / "README.md").is_file()  # bin/collect wrote it when it finished
    loaded = datasets.load_dataset(str(vllm_dataset))["train"]
    assert loaded.column_names == COLUMNS and loaded.num_rows == len(read_rows(vllm_dataset))

    def says_the_manifest(path):
        manifest, card = read_manifest(path), (path / "README.md").read_text()
        fields = card_fields(manifest)
        assert fields["model"] == manifest["model"] and fields["pass_rate"] == manifest["pass_rate"]
        assert fields["correct_per_prompt"] == manifest["summary"]["correct_per_prompt"]
        for shown in (f"`{manifest['model']}`", f"{manifest['pass_rate']:.4f}", manifest["verifier_version"],
                      f"extraction `{manifest['extraction']}`", f"{manifest['counts']['responses']}",
                      *[f"data/{name}" for name in manifest["shards"]]):
            assert shown in card, shown

    says_the_manifest(vllm_dataset)
    copy = tmp_path / "copy"
    shutil.copytree(vllm_dataset, copy, ignore=shutil.ignore_patterns(".offline-rl.lock"))
    rescore(copy, workers=1, extraction="qwen")  # new shards, another extraction: the card follows
    says_the_manifest(copy)
    assert "extraction `qwen`" in (copy / "README.md").read_text()
    assert datasets.load_dataset(str(copy))["train"].num_rows == loaded.num_rows  # the old shards are not read


def test_bad_export_input_is_one_line(vllm_dataset, tmp_path):
    result = run_bin("export", "--format", "trl-ppo", str(vllm_dataset), str(tmp_path / "o"))
    assert result.returncode == 2 and "trl-ppo" in result.stderr
    result = run_bin("export", "--format", "trl-sft", str(tmp_path / "missing"), str(tmp_path / "o"))
    assert_one_line_usage_error(result, "missing")


def test_a_finished_export_is_replaced_only_by_the_same_run_or_with_force(tmp_path, capfd, monkeypatch):
    from rollout.dataset import DatasetWriter
    from tests.conftest import make_rows
    from tests.test_bad_input import assert_one_line, run_alone, snapshot

    writer = DatasetWriter(tmp_path / "data", {"model": "tiny", "source": {"kind": "test"}})
    writer.write_shard(make_rows())
    writer.finish()
    out = tmp_path / "sft"
    assert run_alone("export", ["--format", "trl-sft", str(tmp_path / "data"), str(out)], capfd)[0] == 0
    finished = snapshot(out)
    code, err = run_alone("export", ["--format", "trl-grpo", str(tmp_path / "data"), str(out)], capfd)
    assert_one_line(code, err, f"{out} holds a finished trl-sft export of", "format ('trl-sft', now 'trl-grpo')")
    assert snapshot(out) == finished
    monkeypatch.chdir(tmp_path)
    code, err = run_alone("export", ["--format", "trl-sft", "--data", "./data", "--out", str(out)], capfd)
    assert code == 0, err  # the same run again (its data spelled otherwise)
    assert (out / "data" / "train.parquet").read_bytes() == finished["data/train.parquet"]
    code, err = run_alone("export", ["--format", "trl-grpo", str(tmp_path / "data"), str(out), "--force"], capfd)
    assert code == 0, err
    assert json.loads((out / "export.json").read_text())["columns"] == ["prompt_id", "prompt", "answer"]
