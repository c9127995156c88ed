"""The toolkit beside the ecosystem: one `offline-rl` command, experiment trackers through accelerate, model cards."""

import glob
import json
import os
import struct
import subprocess
import sys

import pytest

from tests.conftest import ROOT, run_bin
from tests.test_cli import assert_one_line_usage_error
from tests.test_train import world_dataset


def wandb_records(path: str):
    """The records of an offline W&B run file (LevelDB-log framing of protobuf records, as wandb writes it)."""
    from wandb.proto import wandb_internal_pb2

    data = open(path, "rb").read()
    ident, magic, _ = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1
    pos, block, parts = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # no room for a header: the block's padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            break
        parts += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last part of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            yield record
            parts = b""


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, tiny_model_dir, tiny_model):
    """3 steps of dft logged to TensorBoard, W&B (offline) and trackio (local) at once."""
    _, tokenizer = tiny_model
    root = tmp_path_factory.mktemp("tracked")
    world_dataset(root / "data", tokenizer, n_prompts=8)
    env = {**os.environ, "WANDB_MODE": "offline", "TRACKIO_DIR": str(root / "trackio"), "WANDB_SILENT": "true"}
    out = root / "run"
    done = subprocess.run([sys.executable, str(ROOT / "bin" / "train"), "--learner", "dft", "--data", str(root / "data"),
                           "--model", str(tiny_model_dir), "--out", str(out), "--steps", "3", "--batch-size", "4",
                           "--log-every", "1", "--report-to", "tensorboard,wandb,trackio"],
                          env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, root / "trackio"


def test_wandb_and_trackio_hold_the_logged_steps_and_the_saved_config(tracked):
    out, trackio_dir = tracked
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    saved = json.loads((out / "train_config.json").read_text())

    history, config = [], {}
    for record in wandb_records(glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb"))[0]):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.history.item})
        elif kind == "config":
            config.update({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in record.config.update})
    assert [(h["_step"], h["train/loss"], h["train/lr"]) for h in history] == [(s["step"], s["loss"], s["lr"]) for s in steps]
    assert {k: config[k] for k in saved} == saved  # the logged config is the saved, resolved one

    os.environ["TRACKIO_DIR"] = str(trackio_dir)  # trackio reads its local database from here
    try:
        from trackio.sqlite_storage import SQLiteStorage

        logs = SQLiteStorage.get_logs("offline-rl", out.name)
        trackio_config = SQLiteStorage.get_run_config("offline-rl", out.name)
    finally:
        del os.environ["TRACKIO_DIR"]
    assert [(r["step"], r["train/loss"]) for r in logs] == [(s["step"], s["loss"]) for s in steps]
    assert {k: trackio_config[k] for k in saved} == saved
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_the_model_card_says_what_made_the_weights_and_lists_evaluations(tracked):
    out, _ = tracked
    card = (out / "README.md").read_text()
    saved = json.loads((out / "train_config.json").read_text())
    assert card.startswith("---\nbase_model: ") and f"base_model: {saved['model']}" in card
    assert "bin/train --learner dft" in card and "3 optimizer steps" in card and str(out.parent / "data") in card
    assert "None recorded" in card
    from offline_rl import evaluate
    from rollout.model_cards import write_model_card

    evaluate.main(["--model", str(out), "--backend", "hf", "--benchmarks", "test-id", "--problems", "2", "--k", "1",
                   "--max-tokens", "8", "--out", str(out.parent / "eval")])
    evaluations = json.loads((out / "evaluations.json").read_text())
    assert list(evaluations) == [str(out.parent / "eval")]
    assert (out / "README.md").read_text() == card  # an evaluation records its results; the card is left alone
    write_model_card(out)  # and is regenerated from the records
    assert "avg@1 test-id" in (out / "README.md").read_text() and "None recorded" not in (out / "README.md").read_text()


def test_unknown_or_missing_tracker_is_one_line(tmp_path, tiny_model_dir, tiny_model):
    _, tokenizer = tiny_model
    world_dataset(tmp_path / "data", tokenizer, n_prompts=4)
    result = run_bin("train", "--data", str(tmp_path / "data"), "--model", str(tiny_model_dir), "--out",
                     str(tmp_path / "o"), "--report-to", "mlflaw")
    assert_one_line_usage_error(result, "unknown tracker 'mlflaw'")
    assert not (tmp_path / "o").exists()


def test_one_command_with_help_at_each_level(capsys, monkeypatch):
    from offline_rl import cli

    monkeypatch.setattr(sys, "argv", list(sys.argv))  # each command reads sys.argv, as its bin/ script does

    with pytest.raises(SystemExit) as done:
        cli.main(["--help"])
    assert done.value.code == 0
    listed = capsys.readouterr().out
    for name in ("collect", "import", "train", "eval", "compare", "iterate", "export", "rescore", "merge"):
        assert f"  {name} " in listed
    for name in cli.COMMANDS:
        with pytest.raises(SystemExit) as done:
            cli.main([name, "--help"])
        shown = capsys.readouterr().out
        assert done.value.code == 0 and "--help-all" in shown and len(shown.splitlines()) <= 60, (name, shown)
        with pytest.raises(SystemExit) as done:
            cli.main([name, "--help-all"])
        assert done.value.code == 0 and len(capsys.readouterr().out.splitlines()) >= len(shown.splitlines())
    with pytest.raises(SystemExit) as done:
        cli.main(["colect"])
    assert done.value.code == 2 and "unknown command 'colect'" in capsys.readouterr().err
