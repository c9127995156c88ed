"""``offline-rl COMMAND [FLAGS]``: every command of the toolkit in one, as ``pip install`` puts it on the PATH.

The ``bin/`` scripts of a checkout run the same functions. ``offline-rl COMMAND --help`` lists a
command's common flags (``--help-all``: every flag); exit codes are those of the command (0 done,
2 bad input, 1 internal failure). Each command is a function ``run_<command>(config, *, context)``
(:mod:`offline_rl.commands` lists them); its ``main`` parses flags into that config and calls it, with the one
context built here: the embedded world and the shipped base model.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Callable
from functools import partial

from offline_rl import commands

if "--verbose" not in sys.argv:  # read by torch's C++ logging when torch loads: before any command imports it
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # vLLM's "NUMA binding" note, among others


def command_main(name: str) -> Callable:
    """Command ``name``'s ``main(argv)``, given the one context offline-rl builds for every command: the embedded
    world's splits and the shipped base model."""
    from offline_rl.embedded import context

    return partial(commands.module(name).main, context=context())


# name -> (what it does, the loader of the command's main(argv), its context given)
COMMANDS: dict[str, tuple[str, Callable]] = {name: (what, partial(command_main, name))
                                             for name, (what, _) in commands.COMMANDS.items()}


def usage() -> str:
    width = max(map(len, COMMANDS))
    return "\n".join(["usage: offline-rl COMMAND [FLAGS]   (offline-rl COMMAND --help for its flags)", "", "commands:",
                      *(f"  {name:<{width}}  {what}" for name, (what, _) in COMMANDS.items())])


def command(name: str, prog: str | None = None) -> None:
    """Run command ``name`` on this process's flags, as its ``bin/`` script does; exits with its code."""
    from rollout.runtime import run

    main = command_main(name)
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
