"""``python -m rewards rescore DATASET_DIR``: recompute pred and reward of a stored offline dataset."""

from __future__ import annotations

import argparse
import json
import sys

from rewards.batch import DEFAULT_DEADLINE_SECONDS
from rewards.extract import DEFAULT_FALLBACKS, EXTRACTIONS, FALLBACKS
from rewards.files import BadInput, is_disk_full, release_unused
from rewards.rescore import rescore


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        print(f"python -m rewards: error: {message}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    parser = _OneLineParser(prog="python -m rewards", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    cmd = commands.add_parser("rescore", help="recompute pred and reward with the current verifier, atomically")
    cmd.add_argument("dataset", help="offline dataset directory (manifest.json + data/*.parquet)")
    cmd.add_argument("--workers", type=int, default=None, help="scoring processes (default: one per CPU)")
    cmd.add_argument("--deadline", type=float, default=DEFAULT_DEADLINE_SECONDS,
                     help="wall-clock seconds per response before its worker is killed and it scores 0")
    cmd.add_argument("--extraction", choices=list(EXTRACTIONS), default=None,
                     help="answer extraction mode: boxed, qwen, math-verify (replaces --fallbacks)")
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
        summary = rescore(args.dataset, workers=args.workers, deadline=args.deadline, fallbacks=fallbacks,
                          extraction=args.extraction)
    except BadInput as e:
        release_unused()
        print(f"python -m rewards rescore: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        release_unused()
        if not is_disk_full(e):
            raise
        print(f"python -m rewards rescore: no space left on device ({e.filename or args.dataset}); the dataset "
              "is unchanged, free some and run it again", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
