"""Bad input: one clear line on stderr, exit code 2, no traceback, nothing written lost."""

import json

import pytest

from rollout.dataset import DatasetWriter
from tests.conftest import make_rows, run_bin


def assert_one_line_usage_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("command", ["collect", "train", "eval", "make-base", "demo"])
def test_every_command_answers_help(command):
    result = run_bin(command, "--help")
    assert result.returncode == 0 and "usage:" in result.stdout


def test_collect_missing_model_path(tmp_path):
    result = run_bin("collect", "--out", str(tmp_path / "out"), "--model", str(tmp_path / "nowhere"))
    assert_one_line_usage_error(result, "model not found")
    assert not (tmp_path / "out").exists()


def test_collect_empty_prompt_file(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    result = run_bin("collect", "--out", str(tmp_path / "out"), "--source", str(tmp_path / "empty.jsonl"))
    assert_one_line_usage_error(result, "no prompts")


def test_collect_refuses_to_mix_sampling_parameters(tmp_path):
    DatasetWriter(tmp_path, {"model": "m"}).write_shard(make_rows())
    before = (tmp_path / "manifest.json").read_bytes()
    result = run_bin("collect", "--out", str(tmp_path), "--limit", "1")
    assert_one_line_usage_error(result, "collected with different", "--force")
    assert (tmp_path / "manifest.json").read_bytes() == before


@pytest.mark.parametrize("learner", ["rft", "dft"])
def test_train_without_accepted_samples_says_the_pass_rate(tmp_path, tiny_model_dir, learner):
    data = tmp_path / "data"
    DatasetWriter(data, {"model": str(tiny_model_dir), "source": {"kind": "world", "split": "train"}}).write_shard(
        make_rows(reward=lambda p, i: 0.0))
    result = run_bin("train", "--learner", learner, "--data", str(data), "--out", str(tmp_path / "out"))
    assert_one_line_usage_error(result, "pass rate 0.000", "0 accepted of 6")


def test_train_unknown_learner(tmp_path):
    result = run_bin("train", "--learner", "nope", "--data", str(tmp_path), "--out", str(tmp_path / "o"))
    assert_one_line_usage_error(result, "unknown learner", "dft")


def test_eval_rejects_k_below_one():
    assert_one_line_usage_error(run_bin("eval", "--k", "0"), "--k")


def test_config_file_sets_defaults_and_flags_override(tmp_path):
    from rollout.cli import parse_config
    from rollout.collect import CollectConfig

    (tmp_path / "c.yaml").write_text(json.dumps({"n": 8, "temperature": 0.5, "out": "x"}))
    cfg = parse_config(CollectConfig, ["--config", str(tmp_path / "c.yaml"), "--n", "2"], "collect", "")
    assert (cfg.n, cfg.temperature, cfg.out) == (2, 0.5, "x")
