"""The offline dataset on disk: ``manifest.json`` plus ``data/*.parquet`` shards.

Shards are written to a temporary name and renamed into place, and the manifest
is rewritten the same way after each shard, so a crash leaves either the old or
the new state, never half a file.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rollout.cards import write_dataset_card
from rollout.files import DatasetError, atomic_write, hold_directory

SCHEMA = pa.schema([
    ("prompt_id", pa.string()),
    ("question", pa.string()),
    ("gold", pa.string()),
    ("prompt", pa.string()),
    ("prompt_token_ids", pa.list_(pa.int32())),
    ("response_token_ids", pa.list_(pa.int32())),
    ("response", pa.string()),
    ("behavior_logprobs", pa.list_(pa.float32())),
    ("sample_idx", pa.int32()),
    ("finish_reason", pa.string()),
    ("pred", pa.string()),
    ("reward", pa.float32()),
    # "sample" (drawn by bin/collect, with the sampling policy's log-probs) or "demonstration" (bin/import:
    # a given solution, behavior_logprobs null); datasets written before this column are samples
    ("origin", pa.string()),
])
COLUMNS = SCHEMA.names


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(data))


def write_json(path: Path, obj: dict) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


class DatasetWriter:
    """Appends shards to an offline dataset directory and keeps its manifest current."""

    def __init__(self, out: Path, manifest: dict):
        """Start a dataset, or continue one: its manifest's shards, counts and identity are kept."""
        self.out = Path(out)
        self.data_dir = self.out / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.data_dir.glob(".*.tmp"):  # a write killed before its rename
            leftover.unlink()
        if (self.out / "manifest.json").exists():
            previous = read_manifest(self.out)
            kept = {k: previous[k] for k in ("counts", "shards", "identity", "wall_seconds") if k in previous}
            if previous.get("identity") not in (None, manifest.get("identity")):
                kept["appended_identities"] = previous.get("appended_identities", []) + [manifest.get("identity")]
            self.manifest = {**previous, **manifest, **kept, "complete": False}
        else:
            self.manifest = dict(manifest)
            self.manifest.setdefault("complete", False)  # until finish(): readers refuse it
        self.manifest.setdefault("counts", {"prompts": 0, "responses": 0, "accepted": 0})
        self.manifest.setdefault("shards", [])
        write_json(self.out / "manifest.json", self.manifest)

    def write_shard(self, rows: list[dict], scoring_timeouts: int = 0) -> Path:
        table = pa.Table.from_pylist([{"origin": "sample", **r} for r in rows], schema=SCHEMA)
        path = self.data_dir / f"shard-{len(self.manifest['shards']):05d}.parquet"
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        atomic_write_bytes(path, sink.getvalue().to_pybytes())
        counts = self.manifest["counts"]
        counts["prompts"] += len({r["prompt_id"] for r in rows})
        counts["responses"] += len(rows)
        counts["accepted"] += sum(1 for r in rows if r["reward"] == 1.0)
        counts["scoring_timeouts"] = counts.get("scoring_timeouts", 0) + scoring_timeouts
        self.manifest["pass_rate"] = counts["accepted"] / max(1, counts["responses"])
        self.manifest["shards"].append(path.name)
        write_json(self.out / "manifest.json", self.manifest)
        return path

    def finish(self, **fields) -> dict:
        self.manifest.update(fields, complete=True)
        write_json(self.out / "manifest.json", self.manifest)
        write_dataset_card(self.out)  # README.md: load_dataset(OUT) with no argument, and what the rows are
        return self.manifest


def read_manifest(path: str | Path) -> dict:
    """The dataset's manifest; :class:`DatasetError` naming the file if it is missing or damaged."""
    manifest = Path(path) / "manifest.json"
    if not manifest.is_file():
        raise DatasetError(f"{path} is not an offline dataset (no manifest.json)")
    try:
        value = json.loads(manifest.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DatasetError(f"{manifest} is damaged: {str(e).splitlines()[0]}") from None
    if not isinstance(value, dict) or not isinstance(value.get("shards", []), list):
        raise DatasetError(f"{manifest} is damaged: not an offline-dataset manifest")
    return value


def is_complete(path: str | Path) -> bool:
    """A finished dataset: its manifest says so (collection writes the manifest first, ``complete`` last)."""
    try:
        return read_manifest(path).get("complete") is True
    except ValueError:  # missing or damaged
        return False


def shard_files(path: str | Path) -> list[Path]:
    """The shards the manifest lists, each checked to be a readable parquet file (else :class:`DatasetError`)."""
    files = []
    for name in read_manifest(path).get("shards", []):
        file = Path(path) / "data" / str(name)
        if "/" in str(name) or not file.is_file():
            raise DatasetError(f"{path}: its manifest lists shard {name!r}, which is missing from data/")
        try:
            pq.read_metadata(file)
        except (OSError, pa.ArrowException) as e:
            raise DatasetError(f"{file} is damaged: {str(e).splitlines()[0]}") from None
        files.append(file)
    return files


def read_rows(path: str | Path, columns: list[str] | None = None) -> list[dict]:
    """The rows of the shards the manifest lists (only those: a shard written after the
    last manifest update is not yet part of the dataset)."""
    rows = []
    for f in shard_files(path):
        try:
            rows += pq.read_table(f, columns=columns).to_pylist()
        except (OSError, pa.ArrowException) as e:
            raise DatasetError(f"{f} is damaged: {str(e).splitlines()[0]}") from None
    return rows


def dataset_paths(spec: str | Path | list) -> list[Path]:
    """One dataset directory, or several (a list, or comma-separated: e.g. the outputs of --shard I/N)."""
    paths = [Path(p) for p in spec] if isinstance(spec, list | tuple) else [Path(p) for p in str(spec).split(",") if p]
    seen = set()
    for p in paths:
        if p.resolve() in seen:
            raise DatasetError(f"{p} is named twice: its rows would count twice")
        seen.add(p.resolve())
    return paths


def complete_manifests(spec: str | Path | list) -> dict[str, dict]:
    """Each dataset's manifest, every one finished (a collection or import cut short is refused: its rows are a
    partial, prompt-ordered prefix that no result should rest on)."""
    manifests = {}
    for p in dataset_paths(spec):
        manifest = read_manifest(p)
        if manifest.get("complete") is False:
            raise DatasetError(f"{p} is unfinished (complete: false); run the command that made it again to finish it")
        manifests[str(p)] = manifest
    return manifests


def load_offline_dataset(path: str | Path | list):
    """The rows of one or several datasets (samples, demonstrations, or both: ``--data A,B``) as one
    ``datasets.Dataset``, a row per response. Shards written before the ``origin`` column read as samples."""
    import datasets

    parts = []
    for directory in dataset_paths(path):
        files = [str(f) for f in shard_files(directory)]
        if not files:
            continue
        try:
            with quiet_datasets():
                part = datasets.load_dataset("parquet", data_files=files, split="train")
        except Exception as e:  # datasets wraps a damaged file (or shards of mixed schemas) in several types
            raise DatasetError(f"{directory}: a shard is damaged: "
                               f"{(str(e).splitlines() or [type(e).__name__])[0]}") from None
        if "origin" not in part.column_names:
            part = part.add_column("origin", ["sample"] * len(part))
        part = part.select_columns(COLUMNS)
        if parts and part.features != parts[0].features:  # e.g. null log-probs typed apart from float lists
            with quiet_datasets():
                part = part.cast(parts[0].features)
        parts.append(part)
    if not parts:
        raise DatasetError(f"{path} holds no data shards")
    return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)


@contextlib.contextmanager
def quiet_datasets():
    """No "Generating train split" bars: local files load in a blink; keep stderr for what matters."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


# what merged inputs must share: one behaviour policy (model, sampling, and what its stored log-probs are) and one
# grader
MERGED_ALIKE = ("kind", "model", "sampling", "logprobs_mode", "template", "extraction", "verifier_version")


def merge(out: str | Path, inputs: list[str | Path], force: bool = False) -> dict:
    """One dataset from several (e.g. the outputs of ``--shard I/N``): shards copied, counts summed.

    Refuses inputs that differ in model, sampling, log-prob mode, template, extraction or verifier (naming the
    difference: a declared server dataset and an undeclared one would merge under the first's mode), or
    that share a (prompt_id, sample_idx) row, so nothing is counted twice; an ``out`` that is one of the inputs;
    and an existing directory, unless ``force``.
    """
    import shutil

    out = Path(out)
    inputs = [Path(p) for p in inputs]
    if len({p.resolve() for p in inputs}) != len(inputs):
        raise DatasetError("an input is named twice; merge only disjoint datasets")
    if out.resolve() in {p.resolve() for p in inputs}:
        raise DatasetError(f"--out {out} is one of the inputs; merge into a new directory")
    manifests = [read_manifest(p) for p in inputs]
    for key in MERGED_ALIKE:  # ratio learners divide by one behaviour policy's log-probs: the inputs must share it
        for p, m in zip(inputs[1:], manifests[1:], strict=True):
            if m.get(key) != manifests[0].get(key):
                raise DatasetError(f"{p} has {key} {m.get(key)!r}, {inputs[0]} has {manifests[0].get(key)!r}; "
                                   "merge only datasets of one model and sampling")
    seen: set[tuple[str, int]] = set()
    for p in inputs:
        for r in read_rows(p, columns=["prompt_id", "sample_idx"]):
            key = (r["prompt_id"], r["sample_idx"])
            if key in seen:
                raise DatasetError(f"{p} repeats row {key} of another input; merge only disjoint shards")
            seen.add(key)
    hold_directory(out, "merge", force=force)
    (out / "data").mkdir(parents=True, exist_ok=True)
    shards = []
    for i, p in enumerate(inputs):
        for name in read_manifest(p)["shards"]:
            target = f"part-{i:03d}-{name}"
            tmp = out / "data" / f".{target}.tmp"
            shutil.copyfile(p / "data" / name, tmp)
            tmp.replace(out / "data" / target)
            shards.append(target)
    counts = {k: sum(m["counts"].get(k, 0) for m in manifests)
              for k in ("prompts", "responses", "accepted", "scoring_timeouts")}
    manifest = {**manifests[0], "shards": shards, "counts": counts, "merged_from": [str(p) for p in inputs],
                "pass_rate": counts["accepted"] / max(1, counts["responses"]),
                "complete": all(m.get("complete") for m in manifests),
                "prompts_too_long": sum(m.get("prompts_too_long", 0) for m in manifests)}
    manifest.pop("summary", None)
    manifest.pop("replaced_shards", None)
    write_json(out / "manifest.json", manifest)
    write_dataset_card(out)
    return manifest
