"""``python -m rollout merge --out OUT DIR [DIR ...]``: one offline dataset from several (e.g. --shard outputs)."""

import sys

from rollout.cli import OneLineParser, configure_logging, run
from rollout.dataset import merge


def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="python -m rollout", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    merge_parser = sub.add_parser("merge", help="merge datasets made with --shard I/N into one")
    merge_parser.error = parser.error  # one line for the subcommand's errors too
    merge_parser.add_argument("--out", required=True, help="output dataset directory (new, unless --force)")
    merge_parser.add_argument("--force", action="store_true", help="write into an existing directory")
    merge_parser.add_argument("inputs", nargs="+", help="dataset directories to merge")
    args = parser.parse_args(argv)
    configure_logging(verbose=False)
    manifest = merge(args.out, args.inputs, force=args.force)
    print(f"merged {len(args.inputs)} datasets: {manifest['counts']['responses']} responses to "
          f"{manifest['counts']['prompts']} prompts -> {args.out}")


if __name__ == "__main__":
    run(main, "python -m rollout merge")
    sys.exit(0)
