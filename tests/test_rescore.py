"""``offline-rl rescore``: new pred and reward, every other column untouched, all-or-nothing under SIGKILL."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rollout.dataset import COLUMNS, DatasetWriter
from rollout.rescore import PAUSE_ENV, rescore

ROOT = Path(__file__).resolve().parents[1]

# (response, gold, stored pred, stored reward, reward after rescoring)
ROWS = [
    ("so \\boxed{\\frac{1}{2}}", "0.5", "\\frac{1}{2}", 0.0, 1.0),  # an old verifier missed it
    ("so \\boxed{3}", "4", "3", 1.0, 0.0),  # an old verifier wrongly accepted it
    ("The answer is 10{,}000.", "10000", "", 0.0, 1.0),  # no box: the "answer is" fallback finds it
    ("\\boxed{7}", "7", "7", 1.0, 1.0),
    ("nothing", "7", "", 0.0, 0.0),
    ("\\boxed{9^{9^{9^{9^9}}}}", "5", "9^{9^{9^{9^9}}}", 0.0, 0.0),
]


def make_dataset(path: Path, shards: int = 3) -> Path:
    writer = DatasetWriter(path, {"verifier_version": "old-verifier/0", "model": "made-up"})
    for s in range(shards):
        rows = []
        for i, (response, gold, pred, reward, _) in enumerate(ROWS):
            rows.append({"prompt_id": f"p{s}-{i}", "question": f"q{s}-{i}", "gold": gold, "prompt": f"Q: q{i}\nA:",
                         "prompt_token_ids": [1, 2, 3 + i], "response_token_ids": [4, 5 + s],
                         "response": response, "behavior_logprobs": [-0.5, -0.25 * i], "sample_idx": s,
                         "finish_reason": "stop", "pred": pred, "reward": reward})
        writer.write_shard(rows)
    writer.finish(wall_seconds=1.0)
    return path


def read_state(path: Path) -> tuple[dict, dict]:
    """(manifest, {column: values over the listed shards}) as a reader that trusts the manifest sees them."""
    manifest = json.loads((path / "manifest.json").read_text())
    tables = [pq.read_table(path / "data" / name) for name in manifest["shards"]]
    return manifest, {c: [v for t in tables for v in t.column(c).to_pylist()] for c in COLUMNS}


def test_rescore_changes_only_pred_and_reward(tmp_path):
    dataset = make_dataset(tmp_path / "ds")
    old_manifest, old = read_state(dataset)
    old_files = {name: pq.read_table(dataset / "data" / name) for name in old_manifest["shards"]}

    summary = rescore(dataset, workers=2, deadline=0.3)

    manifest, new = read_state(dataset)
    assert new["reward"] == [r[4] for r in ROWS] * 3
    assert new["pred"][:3] == ["\\frac{1}{2}", "3", "10{,}000"]
    for (old_name, old_table), new_name in zip(old_files.items(), manifest["shards"], strict=True):
        new_table = pq.read_table(dataset / "data" / new_name)
        assert new_table.schema == old_table.schema
        for column in COLUMNS:
            if column not in ("pred", "reward"):  # the same Arrow data, buffer for buffer
                assert new_table.column(column).equals(old_table.column(column)), column
        assert not (dataset / "data" / old_name).exists()
    assert sorted(p.name for p in (dataset / "data").iterdir()) == sorted(manifest["shards"])
    assert manifest["verifier_version"] == summary["verifier_version"] != "old-verifier/0"
    assert summary["verifier_version_before"] == "old-verifier/0"
    assert summary["pass_rate_before"] == pytest.approx(2 / 6) and summary["pass_rate_after"] == pytest.approx(3 / 6)
    assert summary["changed_rewards"] == 9 and summary["changed_rows"] == 9 and summary["timed_out"] == 3
    assert manifest["pass_rate"] == summary["pass_rate_after"]
    assert manifest["counts"] == {**old_manifest["counts"], "accepted": 9}
    assert manifest["rescores"] == [summary]
    for key in ("model", "complete", "wall_seconds"):
        assert manifest[key] == old_manifest[key]
    assert {c: v for c, v in new.items() if c not in ("pred", "reward")} == \
           {c: v for c, v in old.items() if c not in ("pred", "reward")}

    again = rescore(dataset, workers=2, deadline=0.3)  # idempotent: nothing left to change
    assert again["changed_rows"] == 0 and read_state(dataset)[1] == new


@pytest.mark.slow
def test_rescore_killed_midway_leaves_old_or_new(tmp_path):
    """SIGKILL after each step (shard 1, 2, 3 written; manifest switched): a reader sees old or new, never half;
    the next rescore finishes the job and leaves no stray file."""
    original = make_dataset(tmp_path / "original")
    _, old = read_state(original)
    finished = shutil.copytree(original, tmp_path / "finished")
    rescore(finished, workers=2, deadline=0.3)
    _, new = read_state(finished)
    assert old != new

    for step in (1, 2, 3, 4):
        dataset = shutil.copytree(original, tmp_path / f"killed-{step}")
        proc = subprocess.Popen([sys.executable, "-m", "offline_rl", "rescore", "--data", str(dataset), "--workers", "2",
                                 "--deadline", "0.3"], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                                env={**os.environ, PAUSE_ENV: str(step)})
        try:
            assert proc.stdout.readline().startswith(f"rescore: paused after step {step}")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            proc.stdout.close()
        _, seen = read_state(dataset)
        assert seen == (new if step == 4 else old), step

        rescore(dataset, workers=2, deadline=0.3)
        manifest, after = read_state(dataset)
        assert after == new
        assert sorted(p.name for p in (dataset / "data").iterdir()) == sorted(manifest["shards"])


@pytest.mark.slow
def test_rescore_a_dataset_made_by_bin_collect(tmp_path, vllm_dataset):
    dataset = tmp_path / "ds"
    shutil.copytree(vllm_dataset, dataset)
    old_manifest, old = read_state(dataset)
    done = subprocess.run([sys.executable, "-m", "offline_rl", "rescore", "--data", str(dataset), "--workers", "2"],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    manifest, new = read_state(dataset)
    for column in COLUMNS:
        if column not in ("pred", "reward"):
            assert new[column] == old[column], column
    assert new["reward"] == old["reward"]  # same verifier version: nothing to change on this world data
    assert manifest["rescores"][-1]["changed_rows"] == 0
    assert manifest["counts"] == old_manifest["counts"]


def test_rescore_deletes_only_the_shards_it_replaced(tmp_path):
    dataset = make_dataset(tmp_path / "ds", shards=2)
    foreign = dataset / "data" / "shard-00000-of-another-dataset.parquet"  # e.g. left by a forced merge
    shutil.copyfile(dataset / "data" / "shard-00000.parquet", foreign)
    before = foreign.read_bytes()
    rescore(dataset, workers=1)
    rescore(dataset, workers=1)  # the second one removes the first's replaced shards, nothing else
    assert foreign.read_bytes() == before
    listed = set(json.loads((dataset / "manifest.json").read_text())["shards"])
    assert {p.name for p in (dataset / "data").iterdir()} == listed | {foreign.name}


def test_rescore_keeps_the_extraction_the_dataset_was_scored_with(tmp_path):
    """A math-verify dataset rescored without --extraction stays math-verify: its verdicts and counts hold."""
    writer = DatasetWriter(tmp_path / "mv", {"model": "made-up", "extraction": "math-verify",
                                             "summary": {"correct_per_prompt": {"0/1": 0, "1/1": 0}}})
    writer.write_shard([{"prompt_id": f"p{i}", "question": "q", "gold": gold, "prompt": "Q:", "prompt_token_ids": [1],
                         "response_token_ids": [2], "response": response, "behavior_logprobs": [-0.5],
                         "sample_idx": 0, "finish_reason": "stop", "pred": "", "reward": reward}
                        for i, (response, gold, reward) in enumerate([("so $x = \\frac{1}{2}$", "0.5", 1.0),
                                                                       ("it is $3$", "4", 0.0)])])
    writer.finish(wall_seconds=1.0)
    summary = rescore(tmp_path / "mv", workers=1)
    manifest, state = read_state(tmp_path / "mv")
    assert summary["extraction"] == manifest["extraction"] == "math-verify" and state["reward"] == [1.0, 0.0]
    assert manifest["counts"]["accepted"] == 1 and manifest["summary"]["correct_per_prompt"] == {"0/1": 1, "1/1": 1}
    rescore(tmp_path / "mv", workers=1, extraction="boxed")  # told otherwise: no box, nothing accepted
    assert read_state(tmp_path / "mv")[1]["reward"] == [0.0, 0.0] and read_state(tmp_path / "mv")[0]["pass_rate"] == 0


def test_rescore_prints_a_summary_not_json(tmp_path, capsys):
    from rewards.verify import VERIFIER_VERSION
    from rollout.rescore import RescoreConfig, format_rescore, run_rescore

    dataset = make_dataset(tmp_path / "ds", shards=1)
    manifest = json.loads((dataset / "manifest.json").read_text())
    data = dataset / "data" / manifest["shards"][0]
    pq.write_table(pq.read_table(data).slice(0, 5), data)  # the power tower out: no timeout on a loaded machine
    manifest["counts"]["responses"] = 5
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    run_rescore(RescoreConfig(data=str(dataset), workers=1, deadline=5.0))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and not lines[0].startswith("{")
    assert lines[0].startswith(f"rescored 5 rows of {dataset} (boxed extraction, verifier old-verifier/0 -> "
                               f"{VERIFIER_VERSION}) in ")
    # ROWS[:5]: 2 of 5 accepted before, 3 after; 3 verdicts flip
    assert lines[1] == "  pass rate 40.0 % -> 60.0 %; 3 rewards changed (3 rows with a new pred or reward)"
    summary = {**json.loads((dataset / "manifest.json").read_text())["rescores"][0], "timed_out": 1}
    assert format_rescore(summary, "D").endswith("; 1 timed out after 5 s (scored 0)")


def test_merge_refuses_inputs_with_different_logprobs_modes(tmp_path):
    """A ratio learner divides by the stored log-probs: a dataset whose server declared them (processed) and one that
    did not say are never merged under the first one's mode; inputs of one mode merge and keep it."""
    from rollout.dataset import merge
    from rollout.files import DatasetError

    def dataset(name: str, first_prompt: int, **manifest) -> Path:
        writer = DatasetWriter(tmp_path / name, {"model": "made-up", "backend": "openai", **manifest})
        writer.write_shard([{"prompt_id": f"p{first_prompt + i}", "question": "q", "gold": "1", "prompt": "Q:",
                             "prompt_token_ids": [1], "response_token_ids": [2], "response": "\\boxed{1}",
                             "behavior_logprobs": [-0.5], "sample_idx": 0, "finish_reason": "stop", "pred": "1",
                             "reward": 1.0} for i in range(2)])
        writer.finish(wall_seconds=1.0)
        return tmp_path / name

    declared = [dataset(f"declared{k}", 10 * k, logprobs_mode="processed_logprobs") for k in range(2)]
    undeclared = dataset("undeclared", 20)
    with pytest.raises(DatasetError, match="has logprobs_mode None.*has 'processed_logprobs'"):
        merge(tmp_path / "mixed", [declared[0], undeclared])
    assert not (tmp_path / "mixed").exists()  # refused before anything is written
    assert merge(tmp_path / "merged", declared)["logprobs_mode"] == "processed_logprobs"
