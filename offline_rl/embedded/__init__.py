"""The embedded default: a synthetic math world, the recipe of the shipped base model, and its assets."""

from __future__ import annotations

from pathlib import Path

DEFAULT_BASE_MODEL = Path(__file__).resolve().parent / "assets" / "base-model"


def context(**given):
    """What every command defaults to, as the context ``offline-rl`` gives each (a
    :class:`rollout.runtime.CommandContext`): the world's splits for ``world:SPLIT`` sources and the shipped base model
    when no model is named; ``given``: the rest (an engine, the settings given)."""
    from offline_rl.embedded import world
    from rollout.runtime import CommandContext

    return CommandContext(world=world.load_split, default_model=str(DEFAULT_BASE_MODEL), **given)
