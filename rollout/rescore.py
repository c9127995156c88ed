"""Rescore a stored offline dataset with the current verifier, without resampling.

Only ``pred`` and ``reward`` are recomputed; every other column is carried over as the same
Arrow arrays. The switch is all-or-nothing under a kill at any instant:
1. every rescored shard is written under a new name (temporary file, fsync, rename);
2. the manifest, now listing the new shards, replaces the old one in one ``os.replace``;
3. only then are the old shards deleted.
A reader that reads the manifest sees the old dataset or the new one, never a mix. A rescore
killed before step 2 leaves unlisted new shards behind, which the next rescore deletes.

``--logprobs-model M`` also stores M's log-probs of every response token, at temperature 1, in the
``behavior_logprobs`` column of a demonstrations dataset (which has none), and records M in the manifest
(``scored_logprobs``): M is then their behaviour policy, which ratio learners (pear, ...) divide by. The scoring
function is given by the caller (``offline_rl.policies.score_logprobs``: rollout imports no training code).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rewards.batch import DEFAULT_DEADLINE_SECONDS, score_batch_detailed
from rewards.extract import DEFAULT_FALLBACKS, EXTRACTIONS, FALLBACKS
from rewards.verify import VERIFIER_VERSION
from rollout.cards import write_dataset_card
from rollout.files import DatasetError, atomic_write, fsync_dir, hold_directory
from rollout.runtime import CommandContext, parse_config

# Tests set this to N to hold the rescore after its N-th step (a shard written, or the manifest switched),
# so that they can kill it exactly there.
PAUSE_ENV = "REWARDS_RESCORE_TEST_PAUSE_AFTER_STEP"
_RESCORED = re.compile(r"\.r[0-9a-f]{8}$")  # "shard-00003.r1a2b3c4d": written by the rescore with that token


def _pause(step: int, what: str) -> None:
    if os.environ.get(PAUSE_ENV) == str(step):
        print(f"rescore: paused after step {step}, {what}", flush=True)
        time.sleep(600)


def read_dataset_manifest(dataset: Path) -> dict:
    if not dataset.is_dir():
        raise DatasetError(f"{dataset}: no such directory")
    path = dataset / "manifest.json"
    if not path.is_file():
        raise DatasetError(f"{dataset} is not an offline dataset (no manifest.json)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: unreadable manifest ({e})") from None
    shards = manifest.get("shards") if isinstance(manifest, dict) else None
    if not isinstance(shards, list) or not shards:
        raise DatasetError(f"{dataset} lists no data shards in its manifest")
    for name in shards:
        if not isinstance(name, str) or "/" in name or not (dataset / "data" / name).is_file():
            raise DatasetError(f"{dataset}: manifest lists shard {name!r}, which is missing from data/")
    return manifest


def _remove_unlisted(data_dir: Path, manifest: dict) -> None:
    """Delete what a killed rescore left, and nothing else: temporary files, new shards it wrote but never
    listed (their names carry a rescore token), and old shards the manifest records as replaced.

    A shard the manifest neither lists nor records as replaced is someone else's and stays.
    """
    listed = set(manifest["shards"])
    replaced = {name for name in manifest.get("replaced_shards", []) if isinstance(name, str) and "/" not in name}
    for path in data_dir.iterdir():
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            path.unlink(missing_ok=True)
        elif path.suffix == ".parquet" and path.name not in listed and (
                _RESCORED.search(path.stem) or path.name in replaced):
            path.unlink(missing_ok=True)


def _rescore_table(table: pa.Table, workers: int | None, deadline: float,
                   fallbacks: tuple[str, ...], extraction: str | None = None,
                   scorer: Callable | None = None) -> tuple[pa.Table, dict, list[tuple]]:
    for column in ("response", "gold", "pred", "reward"):
        if column not in table.column_names:
            raise DatasetError(f"shard has no {column!r} column")
    if scorer is not None:  # the scoring model's log-probs of each response, as a sampler's would be stored
        logprobs = scorer(table.column("prompt_token_ids").to_pylist(), table.column("response_token_ids").to_pylist())
        at = table.column_names.index("behavior_logprobs")
        table = table.set_column(at, table.schema.field("behavior_logprobs"),
                                 pa.array(logprobs, type=table.schema.field("behavior_logprobs").type))
    responses = table.column("response").to_pylist()
    golds = table.column("gold").to_pylist()
    result = score_batch_detailed(responses, golds, workers=workers, deadline=deadline, fallbacks=fallbacks,
                                  extraction=extraction)
    old_preds, old_rewards = table.column("pred").to_pylist(), table.column("reward").to_pylist()
    pred_type = table.schema.field("pred").type
    reward_type = table.schema.field("reward").type
    table = table.set_column(table.column_names.index("pred"), table.schema.field("pred"),
                             pa.array(result.preds, type=pred_type))
    table = table.set_column(table.column_names.index("reward"), table.schema.field("reward"),
                             pa.array(result.rewards, type=reward_type))
    prompt_ids = table.column("prompt_id").to_pylist() if "prompt_id" in table.column_names else [None] * len(golds)
    stats = {
        "rows": len(responses),
        "accepted_before": sum(1 for r in old_rewards if r == 1.0),
        "accepted_after": sum(1 for r in result.rewards if r == 1.0),
        "changed_rewards": sum(1 for a, b in zip(old_rewards, result.rewards, strict=True) if a != b),
        "changed_rows": sum(1 for a, b, c, d in zip(old_rewards, result.rewards, old_preds, result.preds, strict=True)
                            if a != b or c != d),
        "timed_out": len(result.timed_out),
    }
    return table, stats, list(zip(prompt_ids, golds, result.rewards, strict=True))


def recorded_extraction(manifest: dict) -> tuple[str | None, tuple[str, ...]]:
    """The (extraction mode, fallbacks) the dataset was scored with, as its manifest records them."""
    recorded = manifest.get("extraction")
    if recorded in EXTRACTIONS:
        return recorded, DEFAULT_FALLBACKS
    if isinstance(recorded, str) and recorded.startswith("boxed+"):
        return None, tuple(f for f in recorded.removeprefix("boxed+").split(",") if f)
    return None, DEFAULT_FALLBACKS


def rescore(dataset: str | Path, workers: int | None = None, deadline: float = DEFAULT_DEADLINE_SECONDS,
            fallbacks: tuple[str, ...] | None = None, extraction: str | None = None, scorer: Callable | None = None,
            scored_by: dict | None = None) -> dict:
    """Recompute ``pred`` and ``reward`` of every row of ``dataset`` with the extraction it was scored with (or the
    one given); returns the summary written to the manifest. Every count the manifest keeps follows. ``scorer``
    (prompt token ids, response token ids -> log-probs) fills ``behavior_logprobs``, and ``scored_by`` (the model,
    the temperature) is recorded as the manifest's ``scored_logprobs``."""
    start = time.time()
    dataset = Path(dataset)
    manifest = read_dataset_manifest(dataset)
    if manifest.get("complete") is False:
        raise DatasetError(f"{dataset} is an unfinished collection (complete: false); finish it first")
    if extraction is None and fallbacks is None:
        extraction, fallbacks = recorded_extraction(manifest)
    fallbacks = DEFAULT_FALLBACKS if fallbacks is None else tuple(fallbacks)
    hold_directory(dataset, "rescore", owned=lambda d: True)  # a collection still writing it is refused
    manifest = read_dataset_manifest(dataset)  # as it is now that nobody else writes it
    data_dir = dataset / "data"
    old_shards = list(manifest["shards"])
    _remove_unlisted(data_dir, manifest)

    token = secrets.token_hex(4)
    new_shards, totals, per_row = [], {}, []
    for name in old_shards:
        try:
            table = pq.read_table(data_dir / name)
        except (OSError, pa.ArrowException) as e:
            raise DatasetError(f"{data_dir / name}: unreadable shard ({e})") from None
        table, stats, rows = _rescore_table(table, workers, deadline, fallbacks, extraction, scorer)
        per_row += rows  # (prompt_id, gold, reward): what the manifest's counts are recounted from
        for key, value in stats.items():
            totals[key] = totals.get(key, 0) + value
        new_name = f"{_RESCORED.sub('', Path(name).stem)}.r{token}.parquet"
        atomic_write(data_dir / new_name, lambda f, table=table: pq.write_table(table, f))
        new_shards.append(new_name)
        _pause(len(new_shards), f"shard {new_name} written")
    fsync_dir(data_dir)

    rows = max(1, totals["rows"])
    summary = {
        "verifier_version_before": manifest.get("verifier_version"),
        "verifier_version": VERIFIER_VERSION,
        "pass_rate_before": totals["accepted_before"] / rows,
        "pass_rate_after": totals["accepted_after"] / rows,
        "changed_rows": totals["changed_rows"],
        "changed_rewards": totals["changed_rewards"],
        "timed_out": totals["timed_out"],
        "rows": totals["rows"],
        "deadline_seconds": deadline,
        "fallbacks": list(fallbacks),
        "extraction": extraction or ("boxed" if tuple(fallbacks) == DEFAULT_FALLBACKS
                                     else "boxed+" + ",".join(fallbacks)),
        "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "wall_seconds": round(time.time() - start, 3),
    }
    manifest["shards"] = new_shards
    manifest["replaced_shards"] = old_shards  # deleted below; a rescore killed before that finishes the job
    manifest["verifier_version"] = VERIFIER_VERSION
    manifest["extraction"] = summary["extraction"]
    manifest["pass_rate"] = summary["pass_rate_after"]
    recount(manifest, per_row)
    if scored_by is not None:
        manifest["scored_logprobs"] = summary["scored_logprobs"] = scored_by
    manifest["rescores"] = [*manifest.get("rescores", []), summary]
    atomic_write(dataset / "manifest.json", lambda f: f.write((json.dumps(manifest, indent=2) + "\n").encode()))
    write_dataset_card(dataset)  # the card follows the manifest: new shards, verifier and pass rate
    fsync_dir(dataset)
    _pause(len(new_shards) + 1, "manifest switched")

    for name in old_shards:
        (data_dir / name).unlink(missing_ok=True)
    return summary


@dataclass(frozen=True)
class RescoreConfig:
    data: str = field(default=None, metadata={"help": "offline dataset directory to rescore in place (required)"})
    extraction: str = field(default=None, metadata={
        "help": "answer extraction: boxed, qwen, math-verify (default: the one the dataset was scored with)",
        "choices": list(EXTRACTIONS)})
    fallbacks: str = field(default=None, metadata={
        "help": f"comma-separated answer fallbacks after the last box, in order; known: {', '.join(FALLBACKS)} "
                "(default: as the dataset was scored)", "advanced": True})
    workers: int = field(default=None, metadata={
        "help": "scoring processes (default: one per CPU)", "min": 1, "advanced": True})
    deadline: float = field(default=DEFAULT_DEADLINE_SECONDS, metadata={
        "help": "wall-clock seconds per response before its worker is killed and it scores 0",
        "above": 0, "advanced": True})
    logprobs_model: str = field(default=None, metadata={
        "help": "also store this model's log-probs of every response token (temperature 1) in a demonstrations "
                "dataset, recorded in its manifest: its behaviour policy for ratio learners (pear, ...)"})


def main(argv: list[str] | None = None, *, context: CommandContext | None = None) -> dict:
    return run_rescore(parse_config(RescoreConfig, argv, "rescore", __doc__), context=context)


def run_rescore(cfg: RescoreConfig, *, context: CommandContext | None = None) -> dict:
    """``offline-rl rescore``: new pred and reward for every row of ``cfg.data``, with the current verifier; with
    ``--logprobs-model``, the context's ``score_logprobs(model, prompt ids, response ids)`` (the training code's
    projection) fills the behaviour log-probs."""
    if cfg.data is None:
        raise DatasetError("--data is required")
    fallbacks = None if cfg.fallbacks is None else tuple(f for f in cfg.fallbacks.split(",") if f)
    unknown = [f for f in fallbacks or () if f not in FALLBACKS]
    if unknown:
        raise DatasetError(f"--fallbacks: unknown {unknown[0]!r}; known: {', '.join(FALLBACKS)}")
    scorer, scored_by = None, None
    if cfg.logprobs_model is not None:
        if context is None or context.score_logprobs is None:
            raise DatasetError("--logprobs-model needs the trainer's projection: run rescore through offline-rl")
        model = scoring_model(Path(cfg.data), cfg.logprobs_model)
        scorer = lambda prompts, responses: context.score_logprobs(model, prompts, responses)  # noqa: E731
        scored_by = {"model": model, "temperature": 1.0, "dtype": "float32"}
    summary = rescore(cfg.data, workers=cfg.workers, deadline=cfg.deadline, fallbacks=fallbacks,
                      extraction=cfg.extraction, scorer=scorer, scored_by=scored_by)
    print(format_rescore(summary, cfg.data))
    return summary


def scoring_model(dataset: Path, model: str) -> str:
    """The model ``--logprobs-model`` names, resolved, once the dataset is known to hold demonstrations tokenized as
    that model tokenizes (one line otherwise): sampled rows keep the log-probs of the policy that drew them."""
    from rollout.models import load_tokenizer, resolve_model

    manifest = read_dataset_manifest(dataset)
    if manifest.get("kind") != "demonstrations":
        raise DatasetError(f"--logprobs-model: {dataset} holds samples, whose behaviour log-probs are those of the "
                           "policy that drew them; only demonstrations (bin/import) are scored by a model")
    model = resolve_model(model)
    tokens = load_tokenizer(model).get_vocab()
    try:
        theirs = load_tokenizer(resolve_model(str(manifest.get("model")))).get_vocab()
    except Exception:  # the model that tokenized them is not at hand: nothing to compare with
        theirs = None
    if theirs is not None and theirs != tokens:
        raise DatasetError(f"--logprobs-model {model} tokenizes otherwise than {manifest.get('model')}, which "
                           f"tokenized {dataset}: its log-probs would be of other tokens")
    return model


def format_rescore(summary: dict, dataset: str) -> str:
    """The summary rescore prints (the manifest's ``rescores`` keeps it whole)."""
    timed_out = summary["timed_out"]
    verifier = (f"verifier {summary['verifier_version_before']} -> {summary['verifier_version']}"
                if summary["verifier_version_before"] != summary["verifier_version"]
                else f"verifier {summary['verifier_version']}")
    return (f"rescored {summary['rows']} rows of {dataset} ({summary['extraction']} extraction, {verifier}) in "
            f"{summary['wall_seconds']:.1f} s\n"
            f"  pass rate {100 * summary['pass_rate_before']:.1f} % -> {100 * summary['pass_rate_after']:.1f} %; "
            f"{summary['changed_rewards']} rewards changed ({summary['changed_rows']} rows with a new pred or reward)"
            + (f"; {timed_out} timed out after {summary['deadline_seconds']:g} s (scored 0)" if timed_out else "")
            + (f"\n  behaviour log-probs of {summary['scored_logprobs']['model']} at temperature 1 stored"
               if summary.get("scored_logprobs") else ""))


def recount(manifest: dict, per_row: list[tuple]) -> None:
    """The manifest's counts that depend on rewards, from the rescored rows: accepted, disagreeing (demonstrations
    whose answer is not their gold's), the summary's pass rate and correct-per-prompt histogram."""
    accepted = sum(reward == 1.0 for _, _, reward in per_row)
    counts = manifest.get("counts")
    if isinstance(counts, dict):
        counts["accepted"] = accepted
        if "disagreeing" in counts:
            counts["disagreeing"] = sum(bool(gold) and reward != 1.0 for _, gold, reward in per_row)
    summary = manifest.get("summary")
    if isinstance(summary, dict):
        summary["pass_rate"] = accepted / max(1, len(per_row))
        if isinstance(summary.get("correct_per_prompt"), dict):
            n = len(summary["correct_per_prompt"]) - 1
            right: dict = {}
            for prompt_id, _, reward in per_row:
                right[prompt_id] = right.get(prompt_id, 0) + (reward == 1.0)
            histogram = [sum(v == k for v in right.values()) for k in range(n + 1)]
            summary["correct_per_prompt"] = {f"{k}/{n}": histogram[k] for k in range(n + 1)}
