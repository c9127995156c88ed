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

from tests.conftest import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_matches_single_process(fsdp_runs, vllm_dataset, tmp_path):
    """dft, dpo (its reference pass split over the ranks), ppo (packed, in micro-batches of at most 250 tokens, as
    many on each rank) and dft under LoRA under DDP (torchrun, no FSDP switch) equal the one-process runs of the FSDP2
    test at the same global batch."""
    from tests.test_fsdp import assert_same_weights, records, runs

    root, _ = fsdp_runs
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    packed = {"ppo": ["--packing", "--micro-batch-tokens", "250"]}
    chosen = {name: argv for name, argv in runs(vllm_dataset, tmp_path, packed).items()
              if name in ("dft", "dpo", "ppo", "dft-lora")}
    (tmp_path / "runs.json").write_text(json.dumps(list(chosen.values())))
    ddp = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_port", str(free_port()),
                          str(ROOT / "tests" / "fsdp_runs.py"), str(tmp_path / "runs.json")],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stderr.count("; 2 processes") == len(chosen) and "FSDP2" not in ddp.stderr
    assert ddp.stderr.count("; packed rows, block-diagonal attention") == 1
    for name in chosen:
        for one, two in zip(records(root / "single" / name), records(tmp_path / name), strict=True):
            assert one["tokens"] == two["tokens"]  # the same global batch
            assert two["loss"] == pytest.approx(one["loss"], rel=1e-4, abs=1e-7)  # the same updates step after step
        assert_same_weights(root / "single" / name, tmp_path / name)
