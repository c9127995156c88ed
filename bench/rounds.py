"""Per-round overhead of bin/iterate: one live engine taking new weights in place, against a new engine per round.

Runs the same online-GRPO rounds twice, one after the other (``--rounds`` rounds of one step on
``--prompts`` prompts x 4 samples, the shipped model, vLLM): once as bin/iterate does by default, once with
``--restart-engine``. Reports the engine time per round after the first (the reload, or the new engine's
start) from each run's rounds.jsonl, the whole command's wall time, and their ratios. The two runs sample
the same responses (the weights are the same either way), so the rest of each round costs the same.

    .venv/bin/python bench/rounds.py [--rounds 8] [--prompts 16]
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(out: Path, rounds: int, prompts: int, *extra: str) -> tuple[float, list[float], list[dict]]:
    command = [sys.executable, str(ROOT / "bin" / "iterate"), "--learner", "grpo", "--rounds", str(rounds),
               "--steps", str(rounds), "--prompts-per-round", str(prompts), "--batch-size", "16", "--out", str(out),
               *extra]
    start = time.time()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    wall = time.time() - start
    records = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    return wall, [r["engine_ms"] for r in records[1:]], records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        live_wall, live_ms, live = run(Path(tmp) / "live", args.rounds, args.prompts)
        fresh_wall, fresh_ms, fresh = run(Path(tmp) / "fresh", args.rounds, args.prompts, "--restart-engine")
    same = [a["sampled_tokens"] for a in live] == [b["sampled_tokens"] for b in fresh]
    print(f"{args.rounds} rounds of online GRPO (1 step, {args.prompts} prompts x 4 samples each), vLLM on CPU")
    print(f"{'':28}{'live engine':>14}{'new engine':>14}{'ratio':>8}")
    median_live, median_fresh = statistics.median(live_ms), statistics.median(fresh_ms)
    print(f"{'engine ms per round (median)':28}{median_live:>14.1f}{median_fresh:>14.1f}"
          f"{median_fresh / median_live:>8.1f}")
    print(f"{'whole command (s)':28}{live_wall:>14.1f}{fresh_wall:>14.1f}{fresh_wall / live_wall:>8.2f}")
    per_round = lambda wall, ms: (wall - ms[0] / 1000) / args.rounds  # noqa: E731
    print(f"same samples both ways: {same}; "
          f"first engine start {live[0]['engine_ms']:.0f} / {fresh[0]['engine_ms']:.0f} ms; "
          f"per round after it (s): {per_round(live_wall, [live[0]['engine_ms']]):.2f} / "
          f"{per_round(fresh_wall, [fresh[0]['engine_ms']]):.2f}")


if __name__ == "__main__":
    main()
