"""``offline-rl merge``: one offline dataset from several disjoint ones (e.g. the outputs of ``collect --shard I/N``).

The inputs must agree in model, sampling, template, extraction and verifier, and share no row; their shards are
copied into ``--out`` under one manifest that counts them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rollout.dataset import merge
from rollout.files import DatasetError
from rollout.runtime import CommandContext, parse_config


@dataclass(frozen=True)
class MergeConfig:
    data: str = field(default=None, metadata={
        "help": "comma-separated dataset directories to merge, e.g. the outputs of collect --shard I/N (required)"})
    out: str = field(default=None, metadata={"help": "output dataset directory (new, unless --force) (required)"})
    force: bool = field(default=False, metadata={"help": "write into an existing directory"})


def main(argv: list[str] | None = None, *, context: CommandContext | None = None) -> dict:
    return run_merge(parse_config(MergeConfig, argv, "merge", __doc__), context=context)


def run_merge(cfg: MergeConfig, *, context: CommandContext | None = None) -> dict:
    """``offline-rl merge``: one dataset from several disjoint ones (it needs nothing of the ``context``)."""
    if cfg.data is None or cfg.out is None:
        raise DatasetError("--data and --out are required")
    inputs = [p.strip() for p in cfg.data.split(",") if p.strip()]
    manifest = merge(cfg.out, inputs, force=cfg.force)
    print(f"merged {len(inputs)} datasets: {manifest['counts']['responses']} responses to "
          f"{manifest['counts']['prompts']} prompts -> {cfg.out}")
    return manifest
