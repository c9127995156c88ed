"""Every command of the toolkit by name: what it does, and the module that holds it.

Each command's module has ``XConfig`` (its settings), ``run_x(cfg, *, context)`` (the command, given a
:class:`rollout.runtime.CommandContext`) and ``main(argv, *, context)`` (which only parses). ``offline-rl``
(:mod:`offline_rl.cli`) runs a command line through ``main``; a command that runs others as its stages (bin/compare)
calls their ``run_x`` through :func:`run_function`: one table for both. Modules are named here, not imported, so that
the table loads nothing and any command may use it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType

# name -> (what it does, the module of its XConfig, run_x and main)
COMMANDS: dict[str, tuple[str, str]] = {
    "collect": ("sample n responses per prompt with vLLM, verify them, store an offline dataset", "rollout.collect"),
    "import": ("demonstrations (question + worked solution) into the same dataset format", "rollout.demonstrations"),
    "train": ("train a learner on offline datasets", "offline_rl.train"),
    "eval": ("sample k answers per problem; avg@k, pass@k, maj@k per benchmark", "offline_rl.evaluate"),
    "compare": ("learners x seeds under one budget -> report.md, results.csv, plots", "offline_rl.experiments.compare"),
    "iterate": ("rounds of collect -> train from the current policy (online GRPO at one step per round)",
                "offline_rl.experiments.iterate"),
    "export": ("a dataset as TRL trainer rows: trl-sft, trl-dpo, trl-grpo", "offline_rl.export"),
    "inspect": ("a dataset's token probabilities under a model (DFT's weights): will DFT help?",
                "offline_rl.inspection"),
    "rescore": ("recompute pred and reward of a dataset with the current verifier (and a model's log-probs)",
                "rollout.rescore"),
    "merge": ("one dataset from several (e.g. --shard outputs)", "rollout.merge"),
    "demo": ("collect, train DFT, evaluate: the embedded default end to end", "offline_rl.experiments.demo"),
    "make-base": ("the committed recipe of the shipped base model", "offline_rl.embedded.base_model"),
}


def module(name: str) -> ModuleType:
    """The module of command ``name`` (imported now: the commands load torch, vLLM and the rest only when run)."""
    return importlib.import_module(COMMANDS[name][1])


def config_class(name: str) -> type:
    """``XConfig`` of command ``name`` (``make-base``: ``MakeBaseConfig``)."""
    return getattr(module(name), "".join(part.capitalize() for part in name.split("-")) + "Config")


def run_function(name: str) -> Callable:
    """``run_x(cfg, *, context)`` of command ``name`` (``make-base``: ``run_make_base``)."""
    return getattr(module(name), "run_" + name.replace("-", "_"))
