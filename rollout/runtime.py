"""Command-line plumbing shared by every entry point.

One dataclass per command fills from flags and an optional ``--config FILE.yaml``
(flags win; the file's values go through the same parsing, so a wrong type is one line).
A field's metadata may bound it (``min``, ``max``, ``above``) or list its ``choices``; every
bound is checked right after parsing. Bad input raises :class:`UsageError`; :func:`run`
turns it into one line on stderr and exit code 2, with no traceback. Logging of vLLM,
transformers and Python warnings is quiet unless ``--verbose``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import re
import shlex
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path

from rollout.files import BadInput, TextError, atomic_write, is_disk_full, read_text, release_unused


class UsageError(Exception):
    """Bad input or usage: reported as one line on stderr, exit code 2."""


class NoExamples(UsageError):
    """The data holds nothing the learner can train on (no accepted sample, no pair): bad input to bin/train; a
    round of bin/iterate records it and goes on."""


class CommandFailed(Exception):
    """The command could not finish, through no fault of its input (a loss became NaN, a stage failed):
    one line on stderr, exit code 1."""


@dataclasses.dataclass(frozen=True)
class CommandContext:
    """What a command is given besides its configuration, the same for every command: ``offline-rl`` builds it once
    (the embedded world and base model), and a command that runs others as stages (compare, iterate, demo) passes
    its own on, with the engine it samples with. ``run_<command>(cfg, *, context)`` takes it; each command uses
    what it needs."""

    world: Callable[[str], list] | None = None  # the loader of world:SPLIT sources (the embedded world's splits)
    default_model: str | None = None  # the model when none is named (the shipped base model)
    engine: typing.Any = None  # an engine already holding the model's weights (collect, eval), used and left open
    live: typing.Any = None  # a LiveEngine that takes each checkpoint in place (iterate's rounds), left open
    given: frozenset[str] = frozenset()  # the settings the command line or a runs file gave (not defaults)
    # the training code's scorer of responses under a model, (model, prompt ids, response ids) -> log-probs at T = 1:
    # rescore --logprobs-model (rollout imports no training code)
    score_logprobs: Callable | None = None


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line (a :class:`UsageError`), not usage + message."""

    def error(self, message):
        raise UsageError(message)


def _field_type(hint) -> type:
    """``int``, ``float``, ``str`` or ``bool`` from a field's annotation (``int | None`` -> ``int``)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _converter(kind: type, flag: str):
    def convert(text: str):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None

    convert.__name__ = kind.__name__
    return convert


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def stage(config) -> dataclasses.Field:
    """A field holding the configuration of a stage the command drives (``config``: that stage's defaults in this
    command), not a flag: its own fields are the command's flags too, one flag per name, so a flag both declare
    (``--seed``) fills both. The command sets what its stages' configs need each time (an output, a model)."""
    return dataclasses.field(default_factory=lambda: dataclasses.replace(config), metadata={"stage": True})


def _template(item):
    """(the class, the defaults) of a config class or of an instance whose values are the defaults."""
    return (item, None) if isinstance(item, type) else (type(item), item)


def options(item) -> list[tuple[type, dataclasses.Field, object]]:
    """(class, field, default) of every flag of ``item`` (a config class, or an instance whose values are the
    defaults): its own fields, then those of the stage configs it holds (:func:`stage`)."""
    cls, template = _template(item)
    own, stages = [], []
    for f in dataclasses.fields(cls):
        if f.metadata.get("stage"):
            stages += options(getattr(template, f.name) if template is not None else f.default_factory())
        else:
            own.append((cls, f, f.default if template is None else getattr(template, f.name)))
    return own + stages


def build_parser(classes: tuple, prog: str, description: str, shown: int | None = None,
                 common: tuple[str, ...] = ()) -> OneLineParser:
    """One flag per field name; a field that several classes share (two learners' ``beta``) is one flag.
    Defaults stay out of the namespace (``SUPPRESS``), so what was given is known, and each class
    keeps its own default for what was not. Fields marked ``advanced``, and every field of the classes after
    the first ``shown`` (e.g. each learner's) and of stage configs but those named in ``common``, show under
    ``--help-all`` only, so that ``--help`` fits a screen."""
    parser = OneLineParser(prog=prog, description=plain(description.strip().split("\n\n")[0]),
                           formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
    show_all = "--help-all" in sys.argv[1:]
    advanced = parser.add_argument_group("advanced (shown with --help-all)") if show_all else None
    added: dict[str, type] = {}
    for position, item in enumerate(classes):
        own = {f.name for f in dataclasses.fields(_template(item)[0])}
        for cls, f, default in options(item):
            kind = _field_type(typing.get_type_hints(cls)[f.name])
            if f.name in added:
                if added[f.name] is not kind:
                    raise TypeError(f"{cls.__name__}.{f.name} is a {kind.__name__} "
                                    f"elsewhere a {added[f.name].__name__}")
                continue
            added[f.name] = kind
            help_text = plain(f.metadata.get("help", ""))
            if default is not None and "default" not in help_text:
                help_text += f" (default: {default})"
            group = parser
            hidden = (shown is not None and position >= shown) or (f.name not in own and f.name not in common)
            if (f.metadata.get("advanced") and f.name not in common) or hidden:
                group, help_text = (advanced, help_text) if show_all else (parser, argparse.SUPPRESS)
            if kind is bool:  # --force / --no-force
                group.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                                   default=argparse.SUPPRESS, help=help_text)
                continue
            group.add_argument(_flag(f.name), dest=f.name, type=_converter(kind, _flag(f.name)),
                               default=argparse.SUPPRESS, choices=f.metadata.get("choices"), help=help_text,
                               metavar=None if f.metadata.get("choices") else f.name.upper())
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of option: value defaults; flags override it")
    parser.add_argument("--verbose", action="store_true", help="show every log line of vLLM and transformers")
    parser.add_argument("-h", "--help", action="help", help="show the common flags and exit")
    parser.add_argument("--help-all", action="help", help="show every flag and exit")
    return parser


_ROLE = re.compile(r":[\w:]+:`~?(?:[\w.]*\.)?([^`.]+)`")  # :func:`run`, :class:`~rollout.files.BadInput`
_LITERAL = re.compile(r"``([^`]*)``")


def plain(text: str) -> str:
    """A docstring's reST as a terminal shows it: ``x`` and :func:`x` as x (``--help`` reads module docstrings)."""
    return _LITERAL.sub(r"\1", _ROLE.sub(r"\1", text))


def check_bounds(config) -> None:
    """Every field's ``min`` / ``max`` / ``above`` bound from its metadata, as one line per violation."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if value is None or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if not math.isfinite(value):
            raise UsageError(f"{_flag(f.name)} must be a finite number (got {value})")
        meta = f.metadata
        if "min" in meta and value < meta["min"]:
            raise UsageError(f"{_flag(f.name)} must be >= {meta['min']} (got {value})")
        if "above" in meta and value <= meta["above"]:
            raise UsageError(f"{_flag(f.name)} must be > {meta['above']} (got {value})")
        if "max" in meta and value > meta["max"]:
            raise UsageError(f"{_flag(f.name)} must be <= {meta['max']} (got {value})")


def _config_file_flags(path: Path, classes: tuple) -> list[str]:
    """The YAML file's values as flags, so that they are typed and checked exactly like flags."""
    import yaml

    if not path.is_file():
        raise UsageError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(read_text(path)) or {}
    except TextError as e:
        raise UsageError(str(e)) from None
    except yaml.YAMLError as e:
        raise UsageError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise UsageError(f"config file {path} must hold a mapping of option: value")
    return _mapping_flags(values, classes, f"config file {path}")


def _mapping_flags(values: dict, classes: tuple, where: str) -> list[str]:
    kinds = {f.name: _field_type(typing.get_type_hints(cls)[f.name]) for item in classes for cls, f, _ in options(item)}
    flags = []
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in kinds:
            raise UsageError(f"{where} has an unknown option: {key}")
        if value is None:
            continue
        if kinds[name] is bool:
            if not isinstance(value, bool):
                raise UsageError(f"{where}: {key} must be true or false (got {value!r})")
            flags.append(_flag(name) if value else "--no-" + name.replace("_", "-"))
        elif isinstance(value, dict | list | bool):
            raise UsageError(f"{where}: {key} must be a single {kinds[name].__name__} (got {value!r})")
        else:
            flags += [_flag(name), str(value)]
    return flags


def parse_config(config_cls, argv: list[str] | None, prog: str, description: str, given: set[str] | None = None,
                 shown: int | None = None, common: tuple[str, ...] = ()):
    """Fill ``config_cls`` from a YAML file (``--config``) and flags; flags override the file.

    ``config_cls`` may be a tuple of dataclasses (e.g. a command's and each learner's); then a
    tuple of filled instances comes back, one per class. An instance in place of a class gives the defaults
    (e.g. bin/iterate's own for a stage). ``given``, if passed, receives the names of the fields that the flags
    or the file set. ``--help`` shows the fields of the first ``shown`` classes, and of their stage configs those
    named in ``common``.
    """
    classes = config_cls if isinstance(config_cls, tuple) else (config_cls,)
    parser = build_parser(classes, prog, description, shown, common)
    argv = sys.argv[1:] if argv is None else list(argv)
    config_path = _find_config_flag(argv)
    from_file = _config_file_flags(Path(config_path), classes) if config_path is not None else []
    namespace = parser.parse_args(from_file + argv)
    configure_logging(namespace.verbose)
    if given is not None:
        given.update(k for k in vars(namespace) if k not in ("config", "verbose"))
    configs = fill(classes, vars(namespace))
    return tuple(configs) if isinstance(config_cls, tuple) else configs[0]


def fill(classes: tuple, values: dict) -> list:
    """One instance of each class (or copy of each instance) from ``values`` (by field name; each class's own
    default, or the instance's value, for the rest), the configs of its stages filled alike, bounds checked."""
    return [_filled(item, values) for item in classes]


def _filled(item, values: dict):
    cls, template = _template(item)
    settings = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("stage"):
            settings[f.name] = _filled(getattr(template, f.name) if template is not None else f.default_factory(),
                                       values)
        elif f.name in values:
            settings[f.name] = values[f.name]
    config = cls(**settings) if template is None else dataclasses.replace(template, **settings)
    check_bounds(config)
    return config


def parse_mapping(classes: tuple, values: dict, where: str) -> tuple[list, set[str]]:
    """``values`` (a YAML mapping of option: value, e.g. one run's flags in a comparison) typed and checked as the
    same options on a command line would be; returns an instance of each class, and the names that were set."""
    if not isinstance(values, dict):
        raise UsageError(f"{where} must be a mapping of option: value")
    parser = build_parser(classes, where, "")
    try:  # a value's type or range, named where it was written
        namespace = parser.parse_args(_mapping_flags(values, classes, where))
        configs = fill(classes, vars(namespace))
    except UsageError as e:
        raise UsageError(str(e) if str(e).startswith(where) else f"{where}: {e}") from None
    return configs, {k for k in vars(namespace) if k not in ("config", "verbose")}


def with_flags(config, values: dict):
    """``config`` as if ``values`` (option: value) had been given as flags: each lands in every field of that name,
    the config's own and its stage configs' (:func:`stage`), as one flag fills them all."""
    settings = {}
    for f in dataclasses.fields(config):
        if f.metadata.get("stage"):
            settings[f.name] = with_flags(getattr(config, f.name), values)
        elif f.name in values:
            settings[f.name] = values[f.name]
    return dataclasses.replace(config, **settings)


def flag_names(item) -> set[str]:
    """The names of every flag of a config class or instance (its stage configs' included)."""
    return {f.name for _, f, _ in options(item)}


def command_line(command: str, *configs, omit: tuple[str, ...] = ()) -> str:
    """The command line that runs ``command`` with ``configs``: its flags that differ from their defaults (a stage
    config's: from the defaults the command gives it). Printed in logs wherever one command runs another's
    function, so that a stage can be repeated by hand."""
    words = [f"bin/{command}"]
    seen = set()
    for name, value, default in (setting for config in configs for setting in _settings(config)):
        if name in seen or name in omit or value == default:
            continue
        seen.add(name)
        if isinstance(value, bool):
            words.append(_flag(name) if value else "--no-" + name.replace("_", "-"))
        elif value is not None:
            words += [_flag(name), f"{value:g}" if isinstance(value, float) else str(value)]
    return shlex.join(words)


def _settings(config, defaults=None) -> list[tuple[str, object, object]]:
    """(name, value, default) of every flag of ``config``, its own fields first, then its stage configs'."""
    own, stages = [], []
    for f in dataclasses.fields(config):
        if f.metadata.get("stage"):
            stages += _settings(getattr(config, f.name), f.default_factory())
        else:
            own.append((f.name, getattr(config, f.name), f.default if defaults is None else getattr(defaults, f.name)))
    return own + stages


def _find_config_flag(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config":
            if i + 1 >= len(argv):
                raise UsageError("--config needs a file")
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def configure_logging(verbose: bool) -> None:
    """Libraries log to stderr, and only errors, unless ``--verbose``: stdout holds results alone."""
    import logging
    import warnings

    global _verbose
    _verbose = verbose
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # vLLM's default is stdout
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "INFO" if verbose else "ERROR")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "info" if verbose else "error")
    os.environ.setdefault("RAY_LOGGER_LEVEL", "info" if verbose else "error")  # ray.init's "Connecting to ..."
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "0" if verbose else "1")
    if not verbose:  # "Loading weights" / "Writing model shards" bars of a 3M-parameter model: noise
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # torch's C++ notes (vLLM's "NUMA binding" line)
    if not verbose:
        warnings.filterwarnings("ignore")  # library deprecation and advice notes; --verbose shows them
        for name in ("vllm", "transformers", "accelerate", "datasets", "torch", "huggingface_hub"):
            logging.getLogger(name).setLevel(logging.ERROR)


CONFIG_NAME = "config.yaml"  # the resolved configuration in OUT, beside the JSON settings files reruns compare
_verbose = False  # --verbose, as the last command line parsed in this process said


def save_config(config, path: Path) -> None:
    """Write the resolved configuration beside a run's outputs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(dataclasses.asdict(config), indent=2, default=str) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def check_rerun_settings(saved: Path, settings: dict, out: Path, force: bool, defaults: dict | None = None,
                         renamed: dict[str, str] | None = None) -> None:
    """A rerun into ``out`` (to resume it) must have the settings saved in ``saved`` by the first run, or ``force``.
    A setting the first run did not record (its command had no such flag yet) had its value in ``defaults`` then;
    ``renamed``: old name -> new name of a setting recorded under its old name."""
    if not saved.exists():
        return
    try:
        previous = json.loads(saved.read_text())
    except ValueError:
        raise UsageError(f"{saved} is damaged; choose another --out, or --force") from None
    for old, new in (renamed or {}).items():
        if old in previous and new not in previous:
            previous[new] = previous.pop(old)
    defaults = defaults or {}
    differs = sorted(k for k, v in settings.items() if previous.get(k, defaults.get(k)) != v)
    if differs and not force:
        raise UsageError(f"{out} was run with different {', '.join(differs)}; choose another --out, or --force")


def print_config(*configs, out: str | Path | None = None, save_in: Path | None = None) -> None:
    """The resolved configuration (the fields of ``configs``, dataclasses or mappings; the first to name a field wins;
    ``force`` left out) saved as ``OUT/config.yaml``, a ``--config`` file that repeats the run, and named in one line
    on stderr; with ``--verbose`` shown there whole, as YAML. ``save_in``: the folder that becomes OUT (a staging
    one) if not OUT itself."""
    import yaml

    values: dict = {}
    for config in configs:
        for key, value in (config if isinstance(config, dict) else dataclasses.asdict(config)).items():
            values.setdefault(key, value)
    values.pop("force", None)  # an action, not a setting: a rerun from this file never overwrites by itself
    text = yaml.safe_dump(json.loads(json.dumps(values, default=str)), sort_keys=False, allow_unicode=True)
    stream = sys.stderr  # as it is now (redirected: a stage of compare, a round of iterate)
    if out is not None:
        target = Path(save_in if save_in is not None else out) / CONFIG_NAME
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda f: f.write(text.encode()))
        print(f"config -> {Path(out) / CONFIG_NAME}", file=stream, flush=True)
    if _verbose:
        print(text, end="", file=stream, flush=True)


class _StageStream(io.TextIOBase):
    """The one stream a stage's output goes to: whatever log is current. A library that binds a log handler to
    ``sys.stderr`` during one stage (transformers, vLLM) writes into the next stage's log too, never into a file
    that stage closed."""

    def __init__(self):
        self.target = None

    def _current(self):
        return self.target if self.target is not None else sys.__stderr__

    def write(self, text: str) -> int:
        return self._current().write(text)

    def flush(self) -> None:
        self._current().flush()

    def fileno(self) -> int:
        return self._current().fileno()

    def isatty(self) -> bool:
        return False


_STAGE_STREAM = _StageStream()


@contextlib.contextmanager
def output_to(log):
    """stdout and stderr into the open file ``log`` for the block (a stage of compare, a round of iterate)."""
    previous = _STAGE_STREAM.target
    _STAGE_STREAM.target = log
    try:
        with contextlib.redirect_stdout(_STAGE_STREAM), contextlib.redirect_stderr(_STAGE_STREAM):
            yield
    finally:
        _STAGE_STREAM.flush()
        _STAGE_STREAM.target = previous


PAUSE_ENV = "OFFLINE_RL_TEST_PAUSE"  # tests: "collect:shard-1" holds the command there, to kill or race it


def pause_point(name: str) -> None:
    """For tests: at the point ``$OFFLINE_RL_TEST_PAUSE`` names, write ``$OFFLINE_RL_TEST_PAUSE_FILE`` and wait
    (at most 10 min) until the test deletes it: the test may kill the command there, or race a second one."""
    if os.environ.get(PAUSE_ENV) != name:
        return
    import time

    flag = Path(os.environ[PAUSE_ENV + "_FILE"])
    flag.write_text(str(os.getpid()))
    deadline = time.time() + 600
    while flag.exists() and time.time() < deadline:
        time.sleep(0.05)


def run(main: Callable[[list[str] | None], object], prog: str) -> None:
    """Run ``main`` as a command: exit 0 on success, 2 with one line on bad input, 1 on internal failure
    (one line for a :class:`CommandFailed`, a traceback for a bug).

    A full disk is one line too; output directories this run created but never wrote into are removed.
    """
    try:
        main(None)
    except (UsageError, BadInput) as e:
        release_unused()
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except CommandFailed as e:
        release_unused()
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        release_unused()
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    except BaseException as e:
        release_unused()
        if isinstance(e, SystemExit):
            raise
        if is_disk_full(e):
            print(f"{prog}: error: no space left on device ({_where(e)}); free some and run the same command "
                  "again to resume", file=sys.stderr)
            sys.exit(2)
        raise
    sys.exit(0)


def _where(error: BaseException) -> str:
    while error is not None:
        if isinstance(error, OSError) and error.filename:
            return str(error.filename)
        error = error.__cause__ or error.__context__
    return "while writing"
