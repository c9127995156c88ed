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


# Qwen2.5-instruct's sampling defaults, and one of each other kind a generation_config.json can hold: an engine that
# takes any of them from the model samples another policy than the one its manifest records
REAL_SHAPED_GENERATION = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05,
                          "min_p": 0.05, "presence_penalty": 0.5, "frequency_penalty": 0.5, "no_repeat_ngram_size": 2,
                          "max_new_tokens": 8}
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="session")
def real_shaped_model(tmp_path_factory) -> Path:
    """The shipped model as a real one ships: a generation_config.json with Qwen2.5-instruct's values (and the other
    kinds, :data:`REAL_SHAPED_GENERATION`; bad words too), a ChatML chat template, and an end-of-turn token
    ``<|im_end|>`` that is not the tokenizer's EOS (``<|endoftext|>``), listed among the model's EOS ids as Qwen's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from offline_rl.embedded.base_model import DEFAULT_BASE_MODEL

    path = tmp_path_factory.mktemp("real-shaped")
    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_BASE_MODEL)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHATML
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(DEFAULT_BASE_MODEL, dtype=torch.float32)
    model.resize_token_embeddings(len(tokenizer))  # the two new rows drawn around the others' mean
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    end, eos = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id
    (path / "generation_config.json").write_text(json.dumps({
        **REAL_SHAPED_GENERATION, "bos_token_id": eos, "pad_token_id": eos, "eos_token_id": [end, eos],
        "bad_words_ids": [tokenizer(" =", add_special_tokens=False)["input_ids"]]}))  # one frequent token
    return path


def model_logprobs(model_dir, rows: list[dict], temperature: float) -> list[list[float]]:
    """The model's own log-probs of each row's response tokens at ``temperature``, ``log softmax(logits / T)``, as
    the ratio learners read it (offline_rl.projection.token_logprobs_at, float32 projection)."""
    from transformers import AutoModelForCausalLM

    from offline_rl.projection import token_logprobs_at
    from offline_rl.views import Example, collate

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    examples = [Example(r["prompt_id"], r["prompt_token_ids"], r["response_token_ids"], None, r["reward"])
                for r in rows]
    batch = collate(examples, pad_token_id=0)
    with torch.no_grad():
        logprobs = token_logprobs_at(model, batch, temperatures=(temperature,), float32=True)[0]  # [B, T]
    where = batch["response_mask"].bool()
    return [logprobs[b][where[b]].tolist() for b in range(len(rows))]


def largest_difference(stored: list[list[float]], recomputed: list[list[float]]) -> float:
    return max(abs(a - b) for s, r in zip(stored, recomputed, strict=True) for a, b in zip(s, r, strict=True))


# a collection from the real-shaped model, the same for every backend: 3 world prompts in its chat template
REAL_SHAPED_ARGS = ["--template", "chat", "--prompts", "3", "--n", "2", "--max-tokens", "32", "--seed", "0"]
# what it asked, and neutral values for the rest: the manifest's record of the policy sampled
REAL_SHAPED_SAMPLING = {"n": 2, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0,
                        "presence_penalty": 0.0, "frequency_penalty": 0.0, "max_tokens": 32, "stop": ["<|im_end|>"]}


def check_real_shaped(data: Path, model: Path) -> list[dict]:
    """A collection of REAL_SHAPED_ARGS from the real-shaped model sampled the policy its manifest records: the stored
    log-probs are the model's own at the recorded temperature, within 1e-4, whatever its generation_config.json says;
    responses are cut at the recorded max_tokens (not its max_new_tokens, 8), or end in one of its end-of-sequence
    tokens, the chat template's end of turn among them. Its rows."""
    from rollout.dataset import read_manifest, read_rows

    manifest = read_manifest(data)
    assert manifest["sampling"] == REAL_SHAPED_SAMPLING and manifest["logprobs_mode"] == "processed_logprobs"
    rows = read_rows(data)
    worst = largest_difference([r["behavior_logprobs"] for r in rows],
                               model_logprobs(model, rows, manifest["sampling"]["temperature"]))
    print(f"{manifest['backend']}: stored vs the model's log-probs at the recorded temperature: at most {worst:.1e}")
    assert worst <= 1e-4, f"{manifest['backend']}: stored log-probs differ from the model's by up to {worst}"
    truncated = [len(r["response_token_ids"]) for r in rows if r["finish_reason"] == "length"]
    assert truncated and set(truncated) == {manifest["sampling"]["max_tokens"]}  # not the model's max_new_tokens
    ends = json.loads((model / "generation_config.json").read_text())["eos_token_id"]  # <|im_end|>, <|endoftext|>
    assert all(r["response_token_ids"][-1] in ends for r in rows if r["finish_reason"] == "stop")
    assert not any(set(r["response_token_ids"][:-1]) & set(ends) for r in rows)
    return rows


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
def real_shaped_dataset(tmp_path_factory, real_shaped_model) -> Path:
    """bin/collect with vLLM from the real-shaped model, in its chat template (REAL_SHAPED_ARGS)."""
    out = tmp_path_factory.mktemp("collect-real-shaped") / "data"
    result = run_bin("collect", "--out", str(out), "--model", str(real_shaped_model), *REAL_SHAPED_ARGS)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


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


def learner_loss(learner, logprobs, batch, cfg=None, tempered_logprobs=None, base_kl=None, **inputs):
    """``learner``'s loss as the training loop calls it: a :class:`~offline_rl.learner.Policy` holding only the
    inputs its record asks for with ``cfg`` (the tempered log-probs are ``logprobs`` themselves unless given:
    temperature 1; the others as given in ``inputs``: snapshot_logprobs, sampler_logprobs, topk_entropy, step),
    and the count its normaliser divides by. Returns (loss_sum, count, metrics)."""
    from offline_rl.learner import Policy, units

    learner = getattr(learner, "LEARNER", learner)  # a learner's module or its record
    cfg = cfg if cfg is not None else learner.config()
    given = {"tempered_logprobs": logprobs if tempered_logprobs is None else tempered_logprobs, "base_kl": base_kl,
             **inputs}
    policy = Policy(logprobs, **{k: v for k, v in given.items() if k in learner.asks(cfg)})
    loss_sum, metrics = learner.loss(policy, batch, cfg)
    return loss_sum, units(batch, learner.normaliser(cfg)), metrics
