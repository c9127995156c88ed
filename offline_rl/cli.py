"""``offline-rl COMMAND [FLAGS]``: every command of the toolkit in one, as ``pip install`` puts it on the PATH.

The ``bin/`` scripts of a checkout run the same functions. ``offline-rl COMMAND --help`` lists a
command's common flags (``--help-all``: every flag); exit codes are those of the command (0 done,
2 bad input, 1 internal failure). Each command is a function ``run_<command>(config)``; its ``main``
parses flags into that config and calls it.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Callable
from functools import partial

if "--verbose" not in sys.argv:  # read by torch's C++ logging when torch loads: before any command imports it
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # vLLM's "NUMA binding" note, among others


def _embedded(main):
    """A rollout command that needs the embedded default: the world's splits and the shipped base model."""
    from offline_rl.embedded import world
    from offline_rl.embedded.base_model import DEFAULT_BASE_MODEL

    return partial(main, world=world.load_split, default_model=str(DEFAULT_BASE_MODEL))


def _collect():
    from rollout.collect import main

    return _embedded(main)


def _import():
    from rollout.demonstrations import main

    return _embedded(main)


def _train():
    from offline_rl.train import main

    return main


def _eval():
    from offline_rl.embedded.base_model import DEFAULT_BASE_MODEL
    from offline_rl.evaluate import main

    return partial(main, default_model=str(DEFAULT_BASE_MODEL))


def _compare():
    from offline_rl.experiments.compare import main

    return main


def _iterate():
    from offline_rl.experiments.iterate import main

    return main


def _inspect():
    from offline_rl.inspection import main

    return main


def _export():
    from offline_rl.export import main

    return main


def _rescore():
    from rollout.rescore import RescoreConfig, run_rescore
    from rollout.runtime import parse_config

    return lambda argv=None: run_rescore(parse_config(RescoreConfig, argv, "rescore", "recompute pred and reward"))


def _merge():
    from rollout.rescore import MergeConfig, run_merge
    from rollout.runtime import parse_config

    return lambda argv=None: run_merge(parse_config(MergeConfig, argv, "merge", "one dataset from several"))


def _demo():
    from offline_rl.experiments.demo import main

    return main


def _make_base():
    from offline_rl.embedded.base_model import main

    return main


# name -> (what it does, the loader of the command's main(argv))
COMMANDS: dict[str, tuple[str, Callable]] = {
    "collect": ("sample n responses per prompt with vLLM, verify them, store an offline dataset", _collect),
    "import": ("demonstrations (question + worked solution) into the same dataset format", _import),
    "train": ("train a learner on offline datasets", _train),
    "eval": ("sample k answers per problem; avg@k, pass@k, maj@k per benchmark", _eval),
    "compare": ("learners x seeds under one budget -> report.md, results.csv, plots", _compare),
    "iterate": ("rounds of collect -> train from the current policy (online GRPO at one step per round)", _iterate),
    "export": ("a dataset as TRL trainer rows: trl-sft, trl-dpo, trl-grpo", _export),
    "inspect": ("a dataset's token probabilities under a model (DFT's weights): will DFT help?", _inspect),
    "rescore": ("recompute pred and reward of a dataset with the current verifier", _rescore),
    "merge": ("one dataset from several (e.g. --shard outputs)", _merge),
    "demo": ("collect, train DFT, evaluate: the embedded default end to end", _demo),
    "make-base": ("the committed recipe of the shipped base model", _make_base),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    return "\n".join(["usage: offline-rl COMMAND [FLAGS]   (offline-rl COMMAND --help for its flags)", "", "commands:",
                      *(f"  {name:<{width}}  {what}" for name, (what, _) in COMMANDS.items())])


def command(name: str, prog: str | None = None) -> None:
    """Run command ``name`` on this process's flags, as its ``bin/`` script does; exits with its code."""
    from rollout.runtime import run

    main = COMMANDS[name][1]()
    atexit.register(end_process_group)
    run(lambda _: main(None), prog or name)


def end_process_group() -> None:
    """The torch.distributed group a multi-process bin/train joined, ended before the interpreter exits (gloo's
    threads would otherwise abort the exit: "terminate called without an active exception")."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        sys.exit(0 if argv else 2)
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"offline-rl: error: unknown command {name!r}; known: {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    sys.argv = [f"offline-rl {name}", *rest]  # each command parses sys.argv, as its bin/ script does
    command(name)


if __name__ == "__main__":
    main()
