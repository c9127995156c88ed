"""End to end through the real commands: vLLM sampling, verification, training, evaluation."""

import json

import pytest
import torch

from offline_rl.embedded import world
from offline_rl.embedded.base_model import DEFAULT_BASE_MODEL
from rollout.dataset import COLUMNS, load_offline_dataset, read_manifest
from tests.conftest import run_bin


def transformers_logprobs(model_dir, dataset, temperature: float = 1.0) -> list[list[float]]:
    """log p(response token | prefix) from a plain float32 forward pass over the stored tokens."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    result = []
    with torch.no_grad():
        for row in dataset:
            prompt, response = row["prompt_token_ids"], row["response_token_ids"]
            ids = torch.tensor([prompt + response])
            logprobs = (model(input_ids=ids).logits[0].float() / temperature).log_softmax(-1)  # [T, V]
            positions = torch.arange(len(prompt) - 1, len(prompt) + len(response) - 1)
            result.append(logprobs[positions, torch.tensor(response)].tolist())
    return result


def mean_abs_diff(stored: list[list[float]], recomputed: list[list[float]]) -> float:
    diffs = [abs(a - b) for s, r in zip(stored, recomputed, strict=True) for a, b in zip(s, r, strict=True)]
    return sum(diffs) / len(diffs)


def check_dataset(path):
    ds = load_offline_dataset(path)
    manifest = read_manifest(path)
    assert ds.column_names == COLUMNS
    assert len(ds) == 48 and manifest["counts"]["responses"] == 48 and manifest["complete"]
    assert sorted(set(ds["sample_idx"])) == [0, 1]
    for row in ds:
        assert len(row["behavior_logprobs"]) == len(row["response_token_ids"]) > 0
        assert row["finish_reason"] in {"stop", "length"}
        assert row["reward"] in {0.0, 1.0}
    assert 0.0 < manifest["pass_rate"] < 1.0  # the base model is partly competent
    return ds


@pytest.mark.slow
def test_vllm_behavior_logprobs_match_a_transformers_forward_pass(vllm_dataset):
    ds = check_dataset(vllm_dataset)
    mad = mean_abs_diff(ds["behavior_logprobs"], transformers_logprobs(DEFAULT_BASE_MODEL, ds))
    print(f"vLLM vs transformers behaviour log-probs: mean |diff| = {mad:.2e} nats")
    assert mad <= 0.02


@pytest.mark.slow
def test_hf_backend_writes_the_same_contract(hf_dataset):
    ds = check_dataset(hf_dataset)
    assert mean_abs_diff(ds["behavior_logprobs"], transformers_logprobs(DEFAULT_BASE_MODEL, ds)) <= 1e-3


@pytest.mark.slow
def test_train_dft_then_eval_loads_the_checkpoint_in_vllm(vllm_dataset, fsdp_runs, tmp_path):
    """bin/train's checkpoint, then bin/eval in vLLM of one: the FSDP2 run's, gathered from its shards (vLLM
    loading one-process checkpoints: every compare and iterate test)."""
    model_dir = tmp_path / "dft"
    result = run_bin("train", "--learner", "dft", "--data", str(vllm_dataset), "--out", str(model_dir),
                     "--steps", "3", "--batch-size", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "tokenizer.json").is_file()
    metrics = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 3 and {"loss", "nll", "p"} <= set(metrics[-1])
    assert metrics[-1]["loss"] < metrics[-1]["nll"]  # DFT's loss is NLL weighted by p < 1

    result = run_bin("eval", "--model", str(fsdp_runs[0] / "fsdp" / "dft"), "--problems", "4", "--k", "2", "--out", str(tmp_path / "eval"))
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert list(results["benchmarks"]) == world.TEST_SPLITS  # every world test split by default
    for bench in world.TEST_SPLITS:
        assert results["benchmarks"][bench]["problems"] == 4
        assert 0.0 <= results["benchmarks"][bench]["avg@2"] <= 1.0
    # stdout is the table alone (bin/eval > table.md): vLLM's and transformers' logs go to stderr, quietly
    assert result.stdout.splitlines()[0] == "| model | benchmark | avg@2 | pass@2 | maj@2 |"
    assert len(result.stdout.splitlines()) == 2 + len(world.TEST_SPLITS) and all(line.startswith("|") for line in result.stdout.splitlines())
    assert not [line for line in result.stderr.splitlines() if "WARNING" in line or "INFO" in line]
