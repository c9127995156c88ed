import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPR = re.compile(r"^\w+Config\(")  # a config dataclass's repr, as commands once printed theirs on stderr


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer, 64-dim Qwen2 with its own tokenizer trained on world text, saved as a checkpoint."""
    from offline_rl.embedded import world
    from offline_rl.embedded.base_model import build_model, train_tokenizer

    texts = [p.prompt + " " + p.solution for p in world.load_split("test-id")]
    tokenizer = train_tokenizer(texts, vocab_size=300)
    model = build_model(tokenizer, hidden_size=64, num_layers=2, seed=0)
    path = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


def run_bin(name: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run one of bin/* as a user would, capturing output."""
    return subprocess.run([sys.executable, str(ROOT / "bin" / name), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def make_rows(n_prompts: int = 3, n: int = 2, reward=lambda p, i: float(i == 0)) -> list[dict]:
    """Well-formed offline-dataset rows with made-up tokens."""
    rows = []
    for p in range(n_prompts):
        for i in range(n):
            rows.append({"prompt_id": f"train-{p:05d}", "question": f"q{p}", "gold": str(p), "prompt": f"Question: q{p}\nAnswer:",
                         "prompt_token_ids": [5, 6, 7 + p], "response_token_ids": [8, 9, 0],
                         "response": f" \\boxed{{{p}}}", "behavior_logprobs": [-0.5, -0.25, -0.125], "sample_idx": i,
                         "finish_reason": "stop", "pred": str(p), "reward": reward(p, i)})
    return rows


COLLECT_ARGS = ["--prompts", "24", "--n", "2", "--max-tokens", "96", "--seed", "0"]


def collect_world(tmp_path_factory, backend: str, *extra: str) -> Path:
    """bin/collect on 24 world train prompts, 2 samples each."""
    out = tmp_path_factory.mktemp(f"collect-{backend}") / "data"
    result = run_bin("collect", "--out", str(out), "--backend", backend, *COLLECT_ARGS, *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    assert not [line for line in result.stderr.splitlines() if REPR.match(line)], result.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def vllm_dataset(tmp_path_factory) -> Path:
    return collect_world(tmp_path_factory, "vllm")


@pytest.fixture(scope="session")
def hf_dataset(tmp_path_factory) -> Path:
    return collect_world(tmp_path_factory, "hf")


@pytest.fixture(scope="session")
def tempered_dataset(tmp_path_factory) -> Path:
    """bin/collect with vLLM at temperature 0.7 (24 prompts, 2 samples each)."""
    return collect_world(tmp_path_factory, "vllm", "--temperature", "0.7")


@pytest.fixture(scope="session")
def fsdp_runs(vllm_dataset, tmp_path_factory):
    """Every learner's run under FSDP2 (one launch of 2 processes) and in one process (some packed on either side:
    tests/test_fsdp.py's PACKED)."""
    from offline_rl import train
    from tests.test_fsdp import PACKED, accelerate_launch, runs

    root = tmp_path_factory.mktemp("fsdp")
    sharded = runs(vllm_dataset, root / "fsdp", PACKED["fsdp"])
    (root / "runs.json").write_text(json.dumps(list(sharded.values())))
    launched = subprocess.run(accelerate_launch(str(ROOT / "tests" / "fsdp_runs.py"), str(root / "runs.json")),
                              capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert launched.returncode == 0, launched.stderr[-4000:]
    for argv in runs(vllm_dataset, root / "single", PACKED["single"]).values():
        train.main(argv)
    return root, launched.stderr


def learner_loss(learner, logprobs, batch, cfg=None, tempered_logprobs=None, base_kl=None):
    """``learner``'s loss as the training loop calls it: a :class:`~offline_rl.learner.Policy` holding only the
    inputs its record asks for (the tempered log-probs are ``logprobs`` themselves unless given: temperature 1),
    and the count its normaliser divides by. Returns (loss_sum, count, metrics)."""
    from offline_rl.learner import Policy, units

    learner = getattr(learner, "LEARNER", learner)  # a learner's module or its record
    cfg = cfg if cfg is not None else learner.config()
    given = {"tempered_logprobs": logprobs if tempered_logprobs is None else tempered_logprobs, "base_kl": base_kl}
    policy = Policy(logprobs, **{k: v for k, v in given.items() if k in learner.inputs})
    loss_sum, metrics = learner.loss(policy, batch, cfg)
    return loss_sum, units(batch, learner.normaliser(cfg)), metrics
