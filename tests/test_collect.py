"""bin/collect: resumption after SIGKILL, sharding, exact behaviour log-probs, bad input."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from offline_rl.embedded.base_model import DEFAULT_BASE_MODEL
from rollout.dataset import read_manifest, read_rows
from rollout.runtime import PAUSE_ENV
from tests.conftest import COLLECT_ARGS, REAL_SHAPED_ARGS, ROOT, check_real_shaped, run_bin
from tests.test_cli import assert_one_line_usage_error
from tests.test_pipeline import mean_abs_diff, transformers_logprobs


def responses(path) -> dict:
    rows = read_rows(path, columns=["prompt_id", "sample_idx", "response_token_ids"])
    keys = [(r["prompt_id"], r["sample_idx"]) for r in rows]
    assert len(keys) == len(set(keys)), "duplicated (prompt_id, sample_idx) rows"
    return {(r["prompt_id"], r["sample_idx"]): r["response_token_ids"] for r in rows}


def start_paused(command: str, args: list[str], point: str, flag: Path) -> subprocess.Popen:
    """``bin/COMMAND ARGS``, held at its pause point ``point`` once ``flag`` appears (it holds the pid)."""
    env = {**os.environ, PAUSE_ENV: point, PAUSE_ENV + "_FILE": str(flag)}
    proc = subprocess.Popen([sys.executable, str(ROOT / "bin" / command), *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not flag.exists():
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() < deadline, f"{command} never reached {point}"
        time.sleep(0.02)
    return proc


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_killed_at_any_point_then_resumed_and_a_second_writer_refused_equal_an_uninterrupted_run(tmp_path, hf_dataset):
    args = ["--backend", "hf", *COLLECT_ARGS, "--shard-size", "2"]  # 12 shards of the 24 prompts of hf_dataset
    out = tmp_path / "killed"
    cmd = ["--out", str(out), *args]

    # 1. killed before its first shard: its first write, the manifest, makes it resumable
    kill(start_paused("collect", cmd, "collect:started", tmp_path / "flag-0"))
    assert read_manifest(out)["complete"] is False and read_manifest(out)["shards"] == []

    # 2. killed at random moments: after a random number of shards, plus a random moment into the next one
    rng = random.Random(0)
    for target in sorted(rng.sample(range(1, 10), 2)):
        proc = subprocess.Popen([sys.executable, str(ROOT / "bin" / "collect"), *cmd], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None:
            if (out / "manifest.json").exists() and len(read_manifest(out)["shards"]) >= target:
                time.sleep(rng.uniform(0, 0.3))
                break
            time.sleep(0.02)
        kill(proc)
    done = len(read_manifest(out)["shards"])
    assert 2 <= done < 12 and not read_manifest(out)["complete"]

    # 3. a second writer while the resumed run holds the directory: refused, naming the holder
    flag = tmp_path / "flag-1"
    first = start_paused("collect", cmd, f"collect:shard-{done + 1}", flag)
    second = run_bin("collect", "--out", str(out), *args, "--shard-size", "5")
    assert_one_line_usage_error(second, f"pid {first.pid}", "being written by another process")
    flag.unlink()  # let the first one finish
    assert first.wait(timeout=300) == 0, first.stderr.read()[-2000:]
    assert read_manifest(out)["complete"] is True
    assert responses(out) == responses(hf_dataset)
    assert read_manifest(out)["counts"] == read_manifest(hf_dataset)["counts"]


@pytest.mark.slow
def test_two_shards_together_equal_the_unsharded_run(tmp_path, hf_dataset):
    """--shard I/N by hand, then merge (vLLM's shards: the Ray test, whose ranks are such shards). In this
    process: bin/collect's and bin/merge's own functions."""
    from offline_rl.cli import COMMANDS
    from rollout.dataset import DatasetError, merge

    collect_main = COMMANDS["collect"][1]()  # bin/collect's main, with the embedded defaults

    shards = [tmp_path / f"shard{i}" for i in range(2)]
    for i, shard in enumerate(shards):
        collect_main(["--out", str(shard), "--backend", "hf", *COLLECT_ARGS, "--shard", f"{i}/2"])
    together = {**responses(shards[0]), **responses(shards[1])}
    assert len(together) == len(responses(shards[0])) + len(responses(shards[1]))
    assert together == responses(hf_dataset)

    merged = tmp_path / "merged"
    merge(merged, shards)
    assert responses(merged) == responses(hf_dataset)
    assert read_manifest(merged)["counts"] == read_manifest(hf_dataset)["counts"]
    shutil.copytree(shards[0], tmp_path / "copy")
    with pytest.raises(DatasetError, match="repeats row"):
        merge(tmp_path / "again", [shards[0], tmp_path / "copy"])
    assert not (tmp_path / "again").exists()


@pytest.mark.slow
def test_data_parallel_ranks_merge_into_the_single_process_run(tmp_path, hf_dataset):
    out = tmp_path / "dp"
    result = run_bin("collect", "--out", str(out), "--backend", "hf", *COLLECT_ARGS, "--data-parallel-size", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("dp-")) == ["dp-0", "dp-1"]
    assert responses(out) == responses(hf_dataset)


@pytest.mark.slow
def test_ray_ranks_equal_one_process_and_a_killed_worker_is_retried(tmp_path, hf_dataset):
    """bin/collect --ray-address local: 2 ranks as Ray tasks on a cluster the command starts (and stops) on
    127.0.0.1. Rank 1's worker is killed after sampling its second shard, before writing it; Ray retries the task,
    which resumes from its first shard. The rows equal the single-process collect's (the first 8 of its prompts).
    The transformers engine keeps the test short (vLLM's ranks on Ray: bench/scale.py, the same rows)."""
    import psutil

    out, flag = tmp_path / "ray", tmp_path / "paused"
    env = {**os.environ, PAUSE_ENV: "collect:1/2:sampled-2", PAUSE_ENV + "_FILE": str(flag)}
    args = ["--out", str(out), "--ray-address", "local", "--data-parallel-size", "2", "--prompts", "8", "--n", "2",
            "--max-tokens", "96", "--seed", "0", "--shard-size", "2", "--backend", "hf"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "bin" / "collect"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not flag.exists():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-3000:] if proc.poll() else "timeout"
        time.sleep(0.05)
    killed = flag.read_text()
    os.kill(int(killed), signal.SIGKILL)  # the worker, mid-shard
    while not flag.exists() or flag.read_text() in ("", killed):  # the retried task reaches the same point
        assert proc.poll() is None and time.time() < deadline, "the killed rank was not retried"
        time.sleep(0.05)
    flag.unlink()
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    assert list((out / "dp-1").glob("collect_config.resume-*.json"))  # the retry resumed rank 1's dataset
    manifest = read_manifest(out)
    assert manifest["complete"] and manifest["counts"]["prompts"] == 8 and manifest["counts"]["responses"] == 16
    single = {k: v for k, v in responses(hf_dataset).items() if k[0] in {p for p, _ in responses(out)}}
    assert responses(out) == single and len(single) == 16
    assert not any("raylet" in " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))
    assert "Started a local Ray instance" not in stderr  # Ray's own log lines: errors only without --verbose


@pytest.mark.slow
def test_logprobs_are_those_of_the_tempered_distribution(tempered_dataset):
    """At temperature 0.7 the stored log-probs are log softmax(logits / 0.7), what was sampled from."""
    rows = read_rows(tempered_dataset)
    stored = [r["behavior_logprobs"] for r in rows]
    tempered = transformers_logprobs(DEFAULT_BASE_MODEL, rows, temperature=0.7)
    untempered = transformers_logprobs(DEFAULT_BASE_MODEL, rows, temperature=1.0)
    mad_tempered, mad_untempered = mean_abs_diff(stored, tempered), mean_abs_diff(stored, untempered)
    print(f"stored vs tempered {mad_tempered:.2e}, vs untempered {mad_untempered:.2e} nats")
    assert mad_tempered <= 0.02
    assert mad_untempered > 100 * max(mad_tempered, 1e-6)  # the check tells the two distributions apart


@pytest.mark.slow
@pytest.mark.parametrize("learner", ["ppo", "iwsft", "adft"])
def test_ratio_learners_start_at_ratio_one_on_tempered_samples(tempered_dataset, tmp_path, capfd, learner):
    """At step 0 the policy is the behaviour model: read at the sampling temperature, every ratio is 1."""
    from tests.test_bad_input import run_command

    code, stderr = run_command("train", ["--learner", learner, "--data", str(tempered_dataset), "--out",
                                         str(tmp_path / "run"), "--steps", "1", "--batch-size", "16",
                                         "--log-every", "1"], capfd)
    assert code == 0, stderr[-2000:]
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    print(f"{learner}: step-0 mean |log-ratio| {first['abs_log_ratio']:.2e}")
    assert first["abs_log_ratio"] <= 1e-3
    assert json.loads((tmp_path / "run" / "train_summary.json").read_text())["ratio_temperature"] == 0.7


@pytest.mark.slow
def test_vllm_samples_the_recorded_policy_of_a_real_shaped_model(real_shaped_dataset, real_shaped_model):
    """vLLM on a model whose generation_config.json sets Qwen2.5-instruct's sampling (and min-p, penalties, ...):
    the stored log-probs are the model's own at the recorded temperature, the manifest records what was asked and
    neutral values for the rest; prompts in the model's chat template, responses ending at its end of turn."""
    rows = check_real_shaped(real_shaped_dataset, real_shaped_model)
    assert read_manifest(real_shaped_dataset)["template"] == "chat"
    assert rows[0]["prompt"].startswith("<|im_start|>user\nEmma has 21 cards.")
    assert rows[0]["prompt"].endswith("<|im_end|>\n<|im_start|>assistant\n")


HOSTILE = ["so \\boxed{9^{9^{9^{9^{9^{9}}}}}}",  # a tower: the LaTeX parser would evaluate it for seconds
           "\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}",  # 5,000 nested braces
           "x " * 50_000 + "\\boxed{5}",  # 10^5 characters, right
           "\\boxed{" + "1" * 100_000 + "}"]  # a 10^5-character answer


class HostileEngine:
    """Stands in for vLLM: every prompt gets the four hostile responses above."""

    def __init__(self, *args, **kwargs):
        pass

    def generate(self, prompt_token_ids, sampling, seeds=None, use_tqdm=True, logprobs=True, on_result=None):
        from rollout.engines import Sample

        results = [[Sample([1, 2, 3], [-0.1, -0.1, -0.1], text, "stop") for text in HOSTILE[: sampling.n]]
                   for _ in prompt_token_ids]
        for i, samples in enumerate(results):
            on_result(i, samples)
        return results

    def close(self):
        pass


def test_collect_scores_hostile_responses_in_parallel_under_the_deadline(tmp_path, tiny_model_dir, capfd, monkeypatch):
    from rollout.engines import EngineFlags
    from tests.test_bad_input import run_command

    source = tmp_path / "problems.jsonl"
    source.write_text("".join(json.dumps({"question": f"What is {i} - {i} + 5?", "answer": "5"}) + "\n"
                              for i in range(50)))
    monkeypatch.setattr(EngineFlags, "engine", lambda self, model, seed: HostileEngine())
    deadline, workers = 0.2, 2
    start = time.time()
    code, err = run_command("collect", ["--out", str(tmp_path / "data"), "--model", str(tiny_model_dir), "--source",
                                        str(source), "--n", "4", "--backend", "hf", "--scoring-deadline", str(deadline)],
                            capfd)
    seconds = time.time() - start
    assert code == 0, err
    manifest = read_manifest(tmp_path / "data")
    assert manifest["counts"]["responses"] == 200
    assert manifest["counts"]["scoring_timeouts"] == 50  # every tower, and nothing else
    assert manifest["counts"]["accepted"] == 50  # the long right answers still score 1
    print(f"collect of 200 hostile responses: {seconds:.1f} s")
    assert seconds < deadline * 200 / workers  # bounded by the deadline over the workers, not by a serial sum


def test_prompts_longer_than_the_context_are_skipped_counted_and_resumed_past(tmp_path, tiny_model_dir, capfd):
    from tests.test_bad_input import run_command

    source = tmp_path / "problems.jsonl"
    long_question = "Mia has 3 apples. " * 200  # ~1,000 tokens: more than the tiny model's 512 positions
    source.write_text("".join(json.dumps({"question": q, "answer": "4"}) + "\n"
                              for q in ["What is 2 + 2?", long_question, "What is 1 + 3?"]))
    args = ["--out", str(tmp_path / "data"), "--model", str(tiny_model_dir), "--source", str(source), "--n", "1",
            "--max-tokens", "4", "--backend", "hf", "--shard-size", "1"]
    code, err = run_command("collect", args, capfd)
    assert code == 0, err
    manifest = read_manifest(tmp_path / "data")
    assert manifest["prompts_too_long"] == 1 and manifest["counts"]["prompts"] == 2 and manifest["complete"]
    from rollout.collect import format_summary

    assert "prompts longer than the model's context, skipped: 1" in format_summary(manifest, tmp_path / "data")
    code, err = run_command("collect", args, capfd)  # a resume after it: nothing left to do, nothing fails
    assert code == 0, err
    assert read_manifest(tmp_path / "data")["counts"] == manifest["counts"]
    assert read_manifest(tmp_path / "data")["prompts_too_long"] == 1


def test_two_prompts_with_one_question_draw_different_samples(tmp_path, tiny_model_dir):
    """Each prompt's sampling stream derives from the run seed and its id: the same question under two ids is
    sampled twice over, not once copied (and a rerun draws the same)."""
    from rollout.collect import main as collect_main
    from rollout.dataset import read_rows

    source = tmp_path / "same.jsonl"
    source.write_text((json.dumps({"question": "What is 2 + 2?", "answer": "4"}) + "\n") * 2)
    responses = []
    for run in ("a", "b"):
        collect_main(["--out", str(tmp_path / run), "--source", str(source), "--model", str(tiny_model_dir),
                      "--backend", "hf", "--n", "2", "--max-tokens", "24", "--template", "world"])
        rows = sorted(read_rows(tmp_path / run), key=lambda r: (r["prompt_id"], r["sample_idx"]))
        assert len({r["prompt_id"] for r in rows}) == 2
        responses.append([r["response_token_ids"] for r in rows])
    first, second = responses[0][:2], responses[0][2:]
    assert first != second and responses[0] == responses[1]


def test_the_hf_engine_samples_the_recorded_policy_of_a_real_shaped_model(tmp_path, real_shaped_model):
    """transformers fills what a request leaves unset from the model's generation_config.json: on a model that sets
    Qwen2.5-instruct's sampling there (and min-p, penalties, no-repeat n-grams, bad words), the hf engine samples
    with what the command asked and neutral values for the rest, and the manifest records that set."""
    from offline_rl.cli import COMMANDS

    COMMANDS["collect"][1]()(["--out", str(tmp_path / "data"), "--backend", "hf", "--model", str(real_shaped_model),
                              *REAL_SHAPED_ARGS])  # bin/collect's main, in this process
    check_real_shaped(tmp_path / "data", real_shaped_model)


def test_every_engine_declares_the_contract_itself_and_records_what_it_applies():
    """Each entry of ENGINES declares every member of the contract in its own class (nothing inherited: no engine is
    exact by default), reports the parameters it samples with in the one form of the manifest, and is a choice of
    --backend. (vLLM's record, read back from its SamplingParams: the vLLM collections' manifests.)"""
    from dataclasses import asdict, fields

    from rollout.engines import ENGINES, EngineFlags
    from rollout.runtime import UsageError
    from rollout.sampling import Engine, SamplingConfig

    members = [name for name in vars(Engine) if not name.startswith("_")] + list(Engine.__annotations__)
    assert {"logprobs_mode", "applied", "serves_own_model", "can_sleep", "generate", "sleep"} <= set(members)
    for name, engine in ENGINES.items():
        assert [m for m in members if m not in vars(engine)] == [], name
    assert next(f for f in fields(EngineFlags) if f.name == "backend").metadata["choices"] == list(ENGINES)
    assert ENGINES["vllm"].logprobs_mode(None) == ENGINES["hf"].logprobs_mode(None) == "processed_logprobs"
    assert ENGINES["openai"].logprobs_mode(None) is None and ENGINES["openai"].logprobs_mode(
        EngineFlags(backend="openai", server_logprobs_mode="raw_logprobs")) == "raw_logprobs"
    asked = SamplingConfig(n=3, temperature=0.7, top_p=0.9, top_k=20, min_p=0.05, repetition_penalty=1.05,
                           max_tokens=7, stop=["x"])
    assert ENGINES["hf"].applied(asked) == ENGINES["openai"].applied(asked) == asdict(asked)
    penalised = SamplingConfig(presence_penalty=0.5, frequency_penalty=0.25)
    assert ENGINES["openai"].applied(penalised) == asdict(penalised)
    with pytest.raises(UsageError, match="no presence or frequency penalty"):
        ENGINES["hf"].applied(penalised)  # transformers has none: refused, not ignored
