"""The embedded default: a synthetic math world, the recipe of the shipped base model, and its assets."""

from __future__ import annotations

from pathlib import Path

DEFAULT_BASE_MODEL = Path(__file__).resolve().parent / "assets" / "base-model"


def context(**given):
    """What every command defaults to, as the context ``offline-rl`` gives each (a
    :class:`rollout.runtime.CommandContext`): the world's splits for ``world:SPLIT`` sources, the shipped base model
    when no model is named, the trainer's scorer of responses under a model; ``given``: the rest (an engine, the
    settings given)."""
    from offline_rl.embedded import world
    from rollout.runtime import CommandContext

    return CommandContext(world=world.load_split, default_model=str(DEFAULT_BASE_MODEL), score_logprobs=score_logprobs,
                          **given)


def score_logprobs(model: str, prompts: list[list[int]], responses: list[list[int]]) -> list[list[float]]:
    """Responses' token log-probs under ``model`` at temperature 1, as the trainer projects them (bin/rescore
    --logprobs-model), imported when used."""
    from offline_rl.inspection import score_logprobs as score

    return score(model, prompts, responses)
