"""bin/import throughput and peak memory on synthetic demonstrations.

Writes N rows (default 100,000) of about 2,000 characters each (a NuminaMath-like problem and worked
solution ending in a box) to a JSONL file, then runs ``bin/import`` on it with the shipped model's
tokenizer in a fresh process and reports rows/s (whole command, start-up included) and the process's peak
RSS (``ru_maxrss``). The input is streamed, so the peak should not grow with N: ``--rows 10000`` gives
the comparison.

    .venv/bin/python bench/import.py [--rows 100000] [--chars 2000]
"""

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def synthetic(path: Path, rows: int, chars: int) -> None:
    rng = random.Random(0)
    words = ["we", "add", "the", "number", "so", "then", "take", "twice", "of", "it", "and", "get", "which", "is"]
    with path.open("w") as f:
        for i in range(rows):
            a, b = rng.randint(1, 999), rng.randint(1, 999)
            body = []
            while sum(map(len, body)) < chars - 80:
                body.append(" ".join(rng.choice(words) for _ in range(12)) + f" {rng.randint(1, 99)}.")
            f.write(json.dumps({"problem": f"Problem {i}: what is {a} + {b}?",
                                "solution": " ".join(body) + f" So {a} + {b} = \\boxed{{{a + b}}}."}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--chars", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "demos.jsonl"
        synthetic(source, args.rows, args.chars)
        size = source.stat().st_size
        start = time.time()
        result = subprocess.run([sys.executable, str(ROOT / "bin" / "import"), "--source", str(source), "--out",
                                 str(Path(tmp) / "out"), "--format", "numina", "--max-model-len", "100000"],
                                capture_output=True, text=True)
        seconds = time.time() - start
        if result.returncode:
            sys.exit(result.stderr[-2000:])
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        manifest = json.loads((Path(tmp) / "out" / "manifest.json").read_text())
    print(f"{args.rows} rows, {size / 1e6:.0f} MB of JSONL: {seconds:.1f} s, {args.rows / seconds:,.0f} rows/s, "
          f"peak RSS {peak:,.0f} MiB; accepted {manifest['counts']['accepted']}, shards {len(manifest['shards'])}")


if __name__ == "__main__":
    main()
