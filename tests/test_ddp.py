"""2-process DDP on CPU (accelerate over torch.distributed, gloo) matches one process with the same global batch.

``accelerate launch --cpu`` starts a single process (multi-CPU needs an MPI config), so the
two ranks are started by torchrun; Accelerator reads their environment and runs DDP on gloo.
"""

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_bin
from tests.test_train import world_dataset


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_matches_single_process(tmp_path, tiny_model_dir, tiny_model):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun, "torchrun comes with torch"
    _, tokenizer = tiny_model
    world_dataset(tmp_path / "data", tokenizer, n_prompts=32)
    args = ["--learner", "dft", "--data", str(tmp_path / "data"), "--model", str(tiny_model_dir), "--steps", "3",
            "--lr", "3e-3", "--log-every", "1", "--seed", "0"]
    single = run_bin("train", *args, "--batch-size", "8", "--out", str(tmp_path / "single"))
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()),
                          str(ROOT / "bin" / "train"), *args, "--batch-size", "8", "--out", str(tmp_path / "ddp")],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]

    def losses(name):
        return [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    for one, two in zip(losses("single"), losses("ddp"), strict=True):
        assert one["tokens"] == two["tokens"]  # the same global batch
        assert one["loss"] == pytest.approx(two["loss"], rel=1e-4)  # and the same updates step after step
        assert one["nll"] == pytest.approx(two["nll"], rel=1e-4)


