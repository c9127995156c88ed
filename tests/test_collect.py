"""bin/collect: resumption after SIGKILL, sharding, exact behaviour log-probs, bad input."""

import json
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from offline_rl.base_model import DEFAULT_BASE_MODEL
from rollout.dataset import read_manifest, read_rows
from tests.conftest import COLLECT_ARGS, ROOT, collect_world, run_bin
from tests.test_pipeline import mean_abs_diff, transformers_logprobs


def responses(path) -> dict:
    rows = read_rows(path, columns=["prompt_id", "sample_idx", "response_token_ids"])
    keys = [(r["prompt_id"], r["sample_idx"]) for r in rows]
    assert len(keys) == len(set(keys)), "duplicated (prompt_id, sample_idx) rows"
    return {(r["prompt_id"], r["sample_idx"]): r["response_token_ids"] for r in rows}


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_equals_an_uninterrupted_run(tmp_path):
    args = ["--backend", "hf", *COLLECT_ARGS, "--shard-size", "2"]
    assert run_bin("collect", "--out", str(tmp_path / "whole"), *args).returncode == 0

    out = tmp_path / "killed"
    rng = random.Random(0)
    kills = 0
    for target in sorted(rng.sample(range(1, 11), 4)):  # of 12 shards: die after a random number of them...
        proc = subprocess.Popen([sys.executable, str(ROOT / "bin" / "collect"), "--out", str(out), *args],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None:
            if (out / "manifest.json").exists():
                try:
                    if len(read_manifest(out)["shards"]) >= target:
                        time.sleep(rng.uniform(0, 0.3))  # ...plus a random moment into the next one
                        proc.send_signal(signal.SIGKILL)
                        kills += 1
                        break
                except (ValueError, KeyError):
                    pass  # never: the manifest is replaced atomically
            time.sleep(0.02)
        proc.wait()
    assert kills >= 3
    assert not read_manifest(out)["complete"]
    result = run_bin("collect", "--out", str(out), *args)  # resume to the end
    assert result.returncode == 0, result.stderr[-2000:]
    assert responses(out) == responses(tmp_path / "whole")
    assert read_manifest(out)["counts"] == read_manifest(tmp_path / "whole")["counts"]


@pytest.mark.slow
def test_two_shards_together_equal_the_unsharded_run(tmp_path_factory, vllm_dataset):
    shards = [collect_world(tmp_path_factory, "vllm", "--shard", f"{i}/2") for i in range(2)]
    together = {**responses(shards[0]), **responses(shards[1])}
    assert len(together) == len(responses(shards[0])) + len(responses(shards[1]))
    assert together == responses(vllm_dataset)

    merged = tmp_path_factory.mktemp("merged") / "data"
    done = subprocess.run([sys.executable, "-m", "rollout", "merge", "--out", str(merged), *map(str, shards)],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert responses(merged) == responses(vllm_dataset)
    assert read_manifest(merged)["counts"] == read_manifest(vllm_dataset)["counts"]
    again = subprocess.run([sys.executable, "-m", "rollout", "merge", "--out", str(merged), str(shards[0]),
                            str(shards[0])], cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 2 and "repeats row" in again.stderr


@pytest.mark.slow
def test_data_parallel_ranks_merge_into_the_single_process_run(tmp_path, hf_dataset):
    out = tmp_path / "dp"
    result = run_bin("collect", "--out", str(out), "--backend", "hf", *COLLECT_ARGS, "--data-parallel-size", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("dp-")) == ["dp-0", "dp-1"]
    assert responses(out) == responses(hf_dataset)


@pytest.mark.slow
def test_logprobs_are_those_of_the_tempered_distribution(tmp_path_factory):
    """At temperature 0.7 the stored log-probs are log softmax(logits / 0.7), what was sampled from."""
    out = collect_world(tmp_path_factory, "vllm", "--temperature", "0.7")
    rows = read_rows(out)
    stored = [r["behavior_logprobs"] for r in rows]
    tempered = transformers_logprobs(DEFAULT_BASE_MODEL, rows, temperature=0.7)
    untempered = transformers_logprobs(DEFAULT_BASE_MODEL, rows, temperature=1.0)
    mad_tempered, mad_untempered = mean_abs_diff(stored, tempered), mean_abs_diff(stored, untempered)
    print(f"stored vs tempered {mad_tempered:.2e}, vs untempered {mad_untempered:.2e} nats")
    assert mad_tempered <= 0.02
    assert mad_untempered > 100 * max(mad_tempered, 1e-6)  # the check tells the two distributions apart


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """The base model with a chat template of its own."""
    path = tmp_path_factory.mktemp("chat-model")
    shutil.copytree(DEFAULT_BASE_MODEL, path, dirs_exist_ok=True)
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["chat_template"] = ("{% for m in messages %}Question: {{ m['content'] }}{% endfor %}"
                               "{% if add_generation_prompt %}{{ '\\n' }}Answer:{% endif %}")
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


@pytest.mark.slow
def test_chat_template_source_logprobs_match_transformers(tmp_path, chat_model):
    source = tmp_path / "problems.jsonl"
    source.write_text("".join(json.dumps({"problem": f"Mia has {a} apples. She buys {b} more apples. How many "
                                          f"apples does Mia have now?", "answer": str(a + b)}) + "\n"
                              for a, b in [(3, 4), (12, 5), (20, 7), (9, 9)]))
    out = tmp_path / "data"
    result = run_bin("collect", "--out", str(out), "--model", str(chat_model), "--source", str(source), "--n", "2",
                     "--max-tokens", "64")
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = read_manifest(out)
    assert manifest["template"] == "chat" and manifest["source"]["format"] == "math500"
    rows = read_rows(out)
    assert rows[0]["prompt"].startswith("Question: Mia has 3 apples.") and rows[0]["prompt"].endswith("\nAnswer:")
    assert mean_abs_diff([r["behavior_logprobs"] for r in rows], transformers_logprobs(chat_model, rows)) <= 0.02


