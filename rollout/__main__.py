"""``python -m rollout merge --out OUT DIR [DIR ...]``: one offline dataset from several (e.g. --shard outputs)."""

import argparse
import sys

from rollout.dataset import merge


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m rollout", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    merge_parser = sub.add_parser("merge", help="merge datasets made with --shard I/N into one")
    merge_parser.add_argument("--out", required=True, help="output dataset directory")
    merge_parser.add_argument("inputs", nargs="+", help="dataset directories to merge")
    args = parser.parse_args()
    try:
        manifest = merge(args.out, args.inputs)
    except (FileNotFoundError, ValueError) as e:
        print(f"merge: error: {e}", file=sys.stderr)
        return 2
    print(f"merged {len(args.inputs)} datasets: {manifest['counts']['responses']} responses to "
          f"{manifest['counts']['prompts']} prompts -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
