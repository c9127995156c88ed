"""``make demo``: the whole pipeline on the embedded default, each stage a real command.

collect (vLLM samples from the shipped base model on the world's train prompts,
verified) -> train DFT on the accepted samples -> eval base and DFT on test-id
and test-ood -> one table.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from offline_rl.evaluate import format_table, load_results
from rewards.files import hold_directory
from rollout.cli import UsageError, parse_config, print_config

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class DemoConfig:
    out: str = field(default=None, metadata={"help": "run directory (default: runs/demo-<time>)"})
    prompts: int = field(default=1000, metadata={"help": "world train prompts to collect from", "min": 1})
    n: int = field(default=4, metadata={"help": "responses per prompt", "min": 1})
    epochs: float = field(default=4.0, metadata={"help": "DFT passes over the accepted samples", "above": 0})
    k: int = field(default=4, metadata={"help": "samples per test problem (avg@k)", "min": 1})
    seed: int = field(default=0, metadata={"help": "seed of collection, training and evaluation"})


def _stage(name: str, command: list[str]) -> float:
    print(f"\n== {name}: {' '.join(command)}", file=sys.stderr, flush=True)
    start = time.time()
    done = subprocess.run([sys.executable, *command], cwd=ROOT)
    if done.returncode != 0:
        raise UsageError(f"stage {name!r} failed with exit code {done.returncode}")
    return time.time() - start


def main(argv: list[str] | None) -> dict:
    cfg = parse_config(DemoConfig, argv, "demo", __doc__)
    out = Path(cfg.out or ROOT / "runs" / time.strftime("demo-%Y%m%d-%H%M%S"))
    hold_directory(out, "demo")
    print_config(cfg)
    seed = ["--seed", str(cfg.seed)]
    seconds = {
        "collect": _stage("collect", ["bin/collect", "--out", str(out / "data"), "--limit", str(cfg.prompts),
                                      "--n", str(cfg.n), *seed]),
        "train": _stage("train", ["bin/train", "--learner", "dft", "--data", str(out / "data"),
                                  "--out", str(out / "dft"), "--epochs", str(cfg.epochs), *seed]),
        "eval base": _stage("eval base", ["bin/eval", "--name", "base", "--k", str(cfg.k),
                                          "--out", str(out / "eval-base"), *seed]),
        "eval dft": _stage("eval dft", ["bin/eval", "--model", str(out / "dft"), "--name", "dft", "--k", str(cfg.k),
                                        "--out", str(out / "eval-dft"), *seed]),
    }
    results = {r["name"]: r for r in (load_results(out / "eval-base"), load_results(out / "eval-dft"))}
    benchmarks = list(results["base"]["benchmarks"])
    print(f"\nDFT on the base model's own accepted samples ({out}):\n")
    print(format_table(results, benchmarks, cfg.k))
    print("\nstage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items())
          + f", total {sum(seconds.values()):.0f}")
    return results
