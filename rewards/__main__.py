"""``python -m rewards rescore DATASET_DIR``: recompute pred and reward of a stored offline dataset."""

from __future__ import annotations

import argparse
import json
import sys

from rewards.batch import DEFAULT_DEADLINE_SECONDS
from rewards.extract import DEFAULT_FALLBACKS, FALLBACKS
from rewards.rescore import DatasetError, rescore


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rewards", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser("rescore", help="recompute pred and reward with the current verifier, atomically")
    cmd.add_argument("dataset", help="offline dataset directory (manifest.json + data/*.parquet)")
    cmd.add_argument("--workers", type=int, default=None, help="scoring processes (default: one per CPU)")
    cmd.add_argument("--deadline", type=float, default=DEFAULT_DEADLINE_SECONDS,
                     help="wall-clock seconds per response before its worker is killed and it scores 0")
    cmd.add_argument("--fallbacks", default=",".join(DEFAULT_FALLBACKS),
                     help=f"comma-separated answer fallbacks after the last box, in order; known: {', '.join(FALLBACKS)}")
    args = parser.parse_args(argv)
    fallbacks = tuple(f for f in args.fallbacks.split(",") if f)
    unknown = [f for f in fallbacks if f not in FALLBACKS]
    if unknown or args.deadline <= 0 or (args.workers is not None and args.workers < 1):
        print(f"python -m rewards: need --deadline > 0, --workers >= 1 and fallbacks among {', '.join(FALLBACKS)}",
              file=sys.stderr)
        return 2
    try:
        summary = rescore(args.dataset, workers=args.workers, deadline=args.deadline, fallbacks=fallbacks)
    except DatasetError as e:
        print(f"python -m rewards rescore: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
