"""Bad input: one clear line on stderr, exit code 2, no traceback, nothing written lost."""

import json

import pytest

from tests.conftest import REPR, run_bin


def assert_one_line_usage_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("command", ["collect", "train", "eval", "compare", "make-base", "demo"])
def test_every_command_answers_help_with_one_default_per_flag_in_kebab_case(command):
    result = run_bin(command, "--help")
    assert result.returncode == 0 and "usage:" in result.stdout
    import re

    text = " ".join(result.stdout.split())  # argparse wraps help text over lines
    assert "``" not in text and ":func:" not in text and ":class:" not in text, "reST markup in --help"
    assert not re.search(r"--[a-z]+_[a-z]", text), "snake_case flag spellings"
    assert "[FORCE]" not in text and "--force" in text or command == "demo"
    entries = re.split(r" (?=--[a-z-]+[ ,])", text)
    assert all(entry.count("(default") <= 1 for entry in entries), [e for e in entries if e.count("(default") > 1]


def test_help_shows_docstrings_without_rest_markup():
    from rollout.runtime import build_parser

    doc = "``bin/x``: :func:`run` turns ``a b`` into :class:`~rollout.runtime.UsageError` (`plain`).\n\nMore."
    assert build_parser((), "x", doc).description == "bin/x: run turns a b into UsageError (`plain`)."


def test_a_bin_command_reports_bad_input_in_one_line(tmp_path):
    assert_one_line_usage_error(run_bin("collect", "--out", str(tmp_path / "o"), "--prompts", "-1"), "--prompts must be >= 1")
    assert not (tmp_path / "o").exists()


def test_files_written_atomically_get_the_usual_mode(tmp_path):
    import os

    from rollout.dataset import write_json

    write_json(tmp_path / "a.json", {"x": 1})
    (tmp_path / "b.json").write_text("{}")
    assert os.stat(tmp_path / "a.json").st_mode & 0o777 == os.stat(tmp_path / "b.json").st_mode & 0o777 == 0o644 & ~_umask()


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    import subprocess
    import sys

    from rollout.files import OutputError, hold_directory, release_unused

    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from rollout.files import hold_directory; "
                               f"hold_directory({str(out)!r}, 'collect'); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, cwd=str(__import__("tests.conftest").conftest.ROOT))
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputError, match=f"being written by another process \\(collect, pid {holder.pid}\\)"):
            hold_directory(out, "collect")
    finally:
        holder.kill()
        holder.wait()
    hold_directory(out, "collect")  # the kernel released the dead holder's lock
    release_unused()


def test_config_file_sets_defaults_and_flags_override(tmp_path):
    from rollout.collect import CollectConfig
    from rollout.runtime import parse_config

    (tmp_path / "c.yaml").write_text(json.dumps({"n": 8, "temperature": 0.5, "out": "x"}))
    cfg = parse_config(CollectConfig, ["--config", str(tmp_path / "c.yaml"), "--n", "2"], "collect", "")
    assert (cfg.n, cfg.temperature, cfg.out) == (2, 0.5, "x")


def test_a_log_handler_bound_in_one_stage_writes_into_the_next_stages_log(tmp_path):
    """Libraries (transformers, vLLM) bind a handler to sys.stderr the first time they log: in compare's second stage
    it must write to that stage's log, not to the first stage's closed file."""
    import logging
    import sys

    from rollout.runtime import output_to

    logger = logging.getLogger("offline-rl-test-library")
    with (tmp_path / "one.log").open("w") as one, output_to(one):
        handler = logging.StreamHandler(sys.stderr)  # bound now, as a library binds it on first use
        logger.addHandler(handler)
        logger.warning("first stage")
    try:
        with (tmp_path / "two.log").open("w") as two, output_to(two):
            logger.warning("second stage: reloaded weights were not loaded")
    finally:
        logger.removeHandler(handler)
    assert (tmp_path / "one.log").read_text() == "first stage\n"
    assert (tmp_path / "two.log").read_text() == "second stage: reloaded weights were not loaded\n"


def test_the_gpu_check_dry_run_lists_every_check_and_its_commands_parse(tmp_path):
    """bench/gpu_check.sh --dry-run: one line per check, and every toolkit command in it is spelled as its parser
    takes it (so the first GPU machine does not fail on a flag)."""
    import shlex
    import subprocess

    from offline_rl.evaluate import EvalConfig
    from offline_rl.experiments.iterate import IterateConfig
    from offline_rl.learners import LEARNER_CONFIGS
    from offline_rl.train import TrainConfig
    from rollout.collect import CollectConfig
    from rollout.demonstrations import ImportConfig
    from rollout.runtime import parse_config
    from tests.conftest import ROOT

    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run", str(tmp_path / "check")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    learners = ("sft", "rft", "dft", "prob", "dpo", "ppo", "iwsft", "adft", "asft", "nft", "grpo")
    assert {f"fsdp2-bf16-{name}" for name in learners} | {"fused-1.5b", "bench-train-0.5b", "rounds-sleep"} <= set(lines)
    assert {f"fsdp2-bf16-packing-{name}" for name in ("dft", "grpo", "dpo")} | {"bench-train-packing-1.5b"} <= set(lines)
    assert {"fit-1.5b", "fit-1.5b-fp16", "fit-1.5b-lora-checkpointing", "fsdp2-bf16-dft-lora-1.5b",
            "fsdp2-bf16-dft-checkpointing-1.5b", "fsdp2-fp16-dft-lora-1.5b"} <= set(lines)
    assert not (tmp_path / "check").exists()  # a dry run writes nothing
    parsers = {"import": ImportConfig, "collect": CollectConfig, "eval": EvalConfig,
               "train": (TrainConfig, *LEARNER_CONFIGS), "iterate": (IterateConfig, *LEARNER_CONFIGS)}
    parsed = 0
    for command in lines.values():
        if command.startswith("skipped"):
            continue
        words = shlex.split(command)
        at = next((i for i, w in enumerate(words) if w.startswith("bin/")), None)
        if at is not None:
            parse_config(parsers[words[at].removeprefix("bin/")], words[at + 1:], "check", "")
            parsed += 1
    assert parsed >= 16


def test_a_successful_command_names_its_saved_config_and_prints_no_repr(tmp_path, capsys):
    """import and export in-process: stderr names OUT/config.yaml in one line (no dataclass repr); the file repeats
    the run as a --config file; --verbose shows it whole, as YAML."""
    import yaml

    from offline_rl.cli import COMMANDS
    from rollout.demonstrations import ImportConfig
    from rollout.runtime import parse_config

    demos, exported = tmp_path / "demos", tmp_path / "sft"
    COMMANDS["import"][1]()(["--source", "world:train", "--prompts", "3", "--out", str(demos)])
    COMMANDS["export"][1]()(["--format", "trl-sft", str(demos), str(exported), "--force"])
    err = capsys.readouterr().err.splitlines()
    assert not [line for line in err if REPR.match(line)]
    assert [line for line in err if line.startswith("config")] == [f"config -> {demos}/config.yaml",
                                                                   f"config -> {exported}/config.yaml"]
    saved = yaml.safe_load((demos / "config.yaml").read_text())
    assert saved["prompts"] == 3 and "force" not in saved
    assert parse_config(ImportConfig, ["--config", str(demos / "config.yaml")], "import", "") == \
           ImportConfig(source="world:train", prompts=3, out=str(demos))
    assert yaml.safe_load((exported / "config.yaml").read_text())["format"] == "trl-sft"

    try:
        COMMANDS["export"][1]()(["--format", "trl-sft", str(demos), str(tmp_path / "again"), "--verbose"])
    finally:
        parse_config(ImportConfig, [], "import", "")  # --verbose off again for the tests after this one
    err = capsys.readouterr().err
    shown = err[err.index("config -> ") :].split("\n", 1)[1]
    assert yaml.safe_load(shown) == yaml.safe_load((tmp_path / "again" / "config.yaml").read_text())
    assert not [line for line in err.splitlines() if REPR.match(line)]
