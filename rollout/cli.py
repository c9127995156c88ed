"""Command-line plumbing shared by every entry point.

One dataclass per command fills from flags and an optional ``--config FILE.yaml``
(flags win). Bad input raises :class:`UsageError`; :func:`run` turns it into one
line on stderr and exit code 2, with no traceback.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path


class UsageError(Exception):
    """Bad input or usage: reported as one line on stderr, exit code 2."""


class _Parser:
    """``transformers.HfArgumentParser`` whose errors are one line, not usage + traceback."""

    def __new__(cls, config_cls, prog: str, description: str):
        from transformers import HfArgumentParser

        class OneLineParser(HfArgumentParser):
            def error(self, message):
                raise UsageError(message)

        parser = OneLineParser(config_cls, prog=prog, description=description)
        parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of defaults; flags override it")
        return parser


def parse_config(config_cls, argv: list[str] | None, prog: str, description: str):
    """Fill ``config_cls`` from a YAML file (``--config``) and flags; flags override the file.

    ``config_cls`` may be a tuple of dataclasses (e.g. a command's and each learner's); then a
    tuple of filled instances comes back, one per class.
    """
    classes = config_cls if isinstance(config_cls, tuple) else (config_cls,)
    parser = _Parser(list(classes), prog, description)
    argv = sys.argv[1:] if argv is None else list(argv)
    config_path = _find_config_flag(argv)
    if config_path is not None:
        import yaml

        path = Path(config_path)
        if not path.is_file():
            raise UsageError(f"config file not found: {path}")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise UsageError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(values, dict):
            raise UsageError(f"config file {path} must hold a mapping of option: value")
        fields = {f.name for cls in classes for f in dataclasses.fields(cls)}
        unknown = sorted(set(k.replace("-", "_") for k in values) - fields)
        if unknown:
            raise UsageError(f"config file {path} has unknown options: {', '.join(unknown)}")
        parser.set_defaults(**{k.replace("-", "_"): v for k, v in values.items()})
    *configs, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if remaining:
        raise UsageError(f"unrecognized arguments: {' '.join(remaining)}")
    configs = configs[: len(classes)]  # the rest is the namespace holding --config
    return tuple(configs) if isinstance(config_cls, tuple) else configs[0]


def _find_config_flag(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config":
            if i + 1 >= len(argv):
                raise UsageError("--config needs a file")
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def save_config(config, path: Path) -> None:
    """Write the resolved configuration beside a run's outputs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dataclasses.asdict(config), indent=2, default=str) + "\n")


def print_config(config, stream=sys.stderr) -> None:
    name = type(config).__name__
    items = ", ".join(f"{k}={v!r}" for k, v in dataclasses.asdict(config).items())
    print(f"{name}({items})", file=stream, flush=True)


def run(main: Callable[[list[str] | None], object], prog: str) -> None:
    """Run ``main`` as a command: exit 0 on success, 2 with one line on bad input."""
    try:
        main(None)
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(0)
