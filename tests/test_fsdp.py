"""FSDP2 on 2 CPU processes (gloo) through ``accelerate launch --config_file configs/accelerate/fsdp-cpu.yaml``:
every learner's 3 steps equal one process's at the same global batch (losses, final weights), LoRA's and activation
checkpointing's too (LoRA's adapters as well); a killed sharded
run resumes to the uninterrupted one's weights; ``--init-from`` continues a sharded checkpoint. (vLLM loads the
gathered checkpoint: tests/test_pipeline.py. The runs: the ``fsdp_runs`` fixture in conftest.py.)"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from safetensors.torch import load_file

from rollout.runtime import PAUSE_ENV
from tests.conftest import ROOT, run_bin
from tests.test_ddp import free_port

CONFIG = ROOT / "configs" / "accelerate" / "fsdp-cpu.yaml"
# every learner, dft with each weighting, dpo with its reference pass from the model, asft with its frozen base, psft
# with a snapshot taken at steps 1 and 3, chord with the dataset's own accepted rows as its expert data (its units in
# two parts); LoRA (dft's adapters with trained embeddings, asft's anchor the model with its adapter off) and activation
# checkpointing (prob, and dft under LoRA, through the fused projection)
LEARNERS = {"sft": [], "rft": [], "dft": ["--save-every", "2"], "dft-sequence": ["--weighting", "sequence"],
            "dft-geometric": ["--weighting", "geometric"], "prob": ["--gradient-checkpointing"], "dpo": [], "ppo": [],
            "iwsft": [], "adft": [], "asft": [], "grpo": [], "nft": [], "psft": ["--snapshot-every", "2"], "eaft": [],
            "pear": [], "chord": ["--expert-data", "{data}"],
            "dft-lora": ["--lora-rank", "4", "--lora-train-embeddings", "--gradient-checkpointing"],
            "asft-lora": ["--lora-rank", "4"]}
# runs with packed rows, each compared with the other side's padded run: the sharded side packs a per-pair, a
# per-response and a base-anchored learner (in full, and under LoRA: its anchor the model with the adapter off), and
# sft in micro-batches of at most 250 packed tokens (as many on each rank); the one process packs dft's per-response
# weighting and nft
PACKED = {"fsdp": {"dpo": ["--packing"], "grpo": ["--packing"], "asft": ["--packing"], "asft-lora": ["--packing"],
                   "sft": ["--packing", "--micro-batch-tokens", "250"]},
          "single": {"dft-sequence": ["--packing"], "nft": ["--packing"]}}


def accelerate_launch(*args: str) -> list[str]:
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    return [accelerate, "launch", "--config_file", str(CONFIG), "--main_process_port", str(free_port()), *args]


def runs(data: Path, out: Path, packed: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """Every learner's bin/train arguments, with ``packed``'s flags added to the runs it names."""
    common = ["--data", str(data), "--steps", "3", "--batch-size", "8", "--lr", "1e-3", "--log-every", "1",
              "--seed", "0", "--report-to", "none"]
    argvs = {name: ["--learner", name.split("-")[0], *[a.replace("{data}", str(data)) for a in extra],
                    *(packed or {}).get(name, []), *common, "--out", str(out / name)]
             for name, extra in LEARNERS.items()}
    # one more step from dft's sharded (or single-process) checkpoint of step 2
    argvs["continued"] = ["--learner", "dft", *common[:2], "--steps", "1", "--batch-size", "8", "--lr", "1e-3",
                          "--log-every", "1", "--report-to", "none", "--out", str(out / "continued"),
                          "--init-from", str(out / "dft" / "checkpoints" / "step-2")]
    return argvs


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_same_weights(a: Path, b: Path, name: str = "model", atol: float = 1e-4) -> None:
    one, two = load_file(a / f"{name}.safetensors"), load_file(b / f"{name}.safetensors")
    assert sorted(one) == sorted(two)
    worst = max(float((one[k] - two[k]).abs().max()) for k in one)
    assert worst <= atol, f"{a.name}: weights differ by {worst}"


@pytest.mark.slow
def test_every_learner_under_fsdp2_equals_one_process(fsdp_runs):
    root, log = fsdp_runs
    assert log.count("FSDP2 over 2 processes") == len(LEARNERS) + 1  # the log names the path that ran
    assert "projection: fused chunks of 256 response tokens; FSDP2" in log  # the fused projection, sharded
    assert log.count("; packed rows, block-diagonal attention") == len(PACKED["fsdp"])
    for name in [*LEARNERS, "continued"]:
        single, sharded = records(root / "single" / name), records(root / "fsdp" / name)
        assert len(single) == len(sharded) == (1 if name == "continued" else 3)
        for one, two in zip(single, sharded, strict=True):
            assert one["tokens"] == two["tokens"], name  # the same global batch
            assert two["loss"] == pytest.approx(one["loss"], rel=1e-4, abs=1e-7), (name, one["step"])
        assert_same_weights(root / "single" / name, root / "fsdp" / name)
        if name.endswith("-lora"):
            assert_same_weights(root / "single" / name / "adapter", root / "fsdp" / name / "adapter", "adapter_model")
    assert (root / "fsdp" / "dft" / "checkpoints" / "step-2" / "sharded" / ".metadata").is_file()  # DCP shards
    assert records(root / "fsdp" / "continued")[0]["step"] == 3  # counted on from the sharded checkpoint


@pytest.mark.slow
def test_a_killed_fsdp2_run_resumes_to_the_uninterrupted_weights(fsdp_runs, vllm_dataset, tmp_path):
    root, _ = fsdp_runs
    argv = runs(vllm_dataset, tmp_path)["dft"]
    flag = tmp_path / "paused"
    env = {**os.environ, PAUSE_ENV: "train:step-2", PAUSE_ENV + "_FILE": str(flag)}
    proc = subprocess.Popen(accelerate_launch(str(ROOT / "bin" / "train"), *argv), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not flag.exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline, "the sharded run never reached its first checkpoint"
        time.sleep(0.05)
    job = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
    for pid in job:  # the launcher and both ranks (torchrun starts them in sessions of their own), after step 2's save
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "dft" / "train_summary.json").exists()
    resumed = subprocess.run(accelerate_launch(str(ROOT / "bin" / "train"), *argv, "--resume"), capture_output=True,
                             text=True, cwd=ROOT, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [r["step"] for r in records(tmp_path / "dft")] == [1, 2, 3]
    assert_same_weights(tmp_path / "dft", root / "fsdp" / "dft", atol=1e-6)
    # a sharded checkpoint is not continued by an unsharded run: one line
    refused = run_bin("train", *argv[:-2], "--out", str(tmp_path / "other"), "--init-from",
                      str(tmp_path / "dft" / "checkpoints" / "step-2"))
    assert refused.returncode == 2 and "holds FSDP2 shards" in refused.stderr.strip().splitlines()[-1]
