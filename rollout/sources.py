"""Prompt sources: the embedded world, local files, Hugging Face datasets, known benchmarks.

Every source yields records ``{"prompt_id", "question", "gold"}``. A *format*
names where a benchmark keeps its question, gold answer and id, and how its gold
is normalised (GSM8K's ``#### 18``, OlympiadBench's list-valued ``final_answer``,
Minerva's boxed solution); ``plain`` takes ``--question-field``/``--answer-field``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rewards.normalize import gold_answer
from rollout.dataset import quiet_datasets
from rollout.files import read_text


def _gold(benchmark: str) -> Callable[[dict], str]:
    """The verifier's own gold normalisation for a known benchmark's records."""
    return lambda row: gold_answer(row, benchmark)


@dataclass(frozen=True)
class Format:
    question: str
    gold: Callable[[dict], str] | str  # a field name, or a function of the row
    id_fields: tuple[str, ...] = ("id", "unique_id", "idx")


FORMATS: dict[str, Format] = {
    "gsm8k": Format("question", _gold("gsm8k")),
    "math500": Format("problem", _gold("math500")),
    "math": Format("problem", _gold("minerva_math")),  # the full MATH set: gold is the solution's last box
    "minerva": Format("problem", _gold("minerva_math")),
    "olympiad": Format("question", _gold("olympiadbench")),
    "aime24": Format("problem", _gold("aime24")),
    "amc23": Format("problem", _gold("amc23")),
}
# file names of the shared benchmarks, for --format auto
_FILE_HINTS = {"gsm8k": "gsm8k", "math500": "math500", "minerva": "minerva", "olympiad": "olympiad",
               "aime": "aime24", "amc": "amc23"}


class SourceError(ValueError):
    """A prompt source that cannot be used as given (missing file, missing field, ...)."""


@dataclass
class Loaded:
    records: list[dict]
    skipped_without_gold: int
    description: dict


def load_rows(spec: str, hub_split: str = "test") -> tuple[list[dict], str]:
    """Rows of a local JSONL/JSON/Parquet/CSV file, a ``save_to_disk`` directory, or a hub dataset."""
    import datasets

    path = Path(spec).expanduser()
    loaders = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
    if path.is_file():
        if path.suffix not in loaders:
            raise SourceError(f"unsupported prompt file type {path.suffix!r}; use one of {', '.join(loaders)}")
        if path.stat().st_size == 0:
            return [], "file"
        if path.suffix == ".csv":  # cells stay text: a gold "2" must not become 2.0, nor an empty cell NaN
            try:
                return list(csv.DictReader(io.StringIO(read_text(path), newline=""))), "file"
            except csv.Error as e:
                raise SourceError(f"cannot read {path}: {e}") from None
        try:
            with quiet_datasets():
                ds = datasets.load_dataset(loaders[path.suffix], data_files=str(path), split="train")
        except Exception as e:  # datasets raises many types for a malformed file
            raise SourceError(f"cannot read {path}: {str(e).splitlines()[0]}") from None
        return ds.to_list(), "file"
    if path.is_dir():
        return load_saved(path, hub_split).to_list(), "disk"
    if "/" in spec and not spec.startswith((".", "/", "~")) and spec.count("/") == 1:
        try:  # a hub dataset name: real code, exercised wherever the hub is reachable
            return datasets.load_dataset(spec, split=hub_split).to_list(), "hub"
        except Exception as e:
            raise SourceError(f"cannot load hub dataset {spec}: {str(e).splitlines()[0]}") from None
    raise SourceError(f"prompt source not found: {spec}")


def load_saved(path: Path, split: str):
    """One split of a ``save_to_disk`` directory (memory-mapped), or SourceError naming what is wrong."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise SourceError(f"{path} is not a saved Hugging Face dataset: {str(e).splitlines()[0]}") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise SourceError(f"{path} has no split {split!r}; it has {', '.join(ds)}")
        ds = ds[split]
    return ds


def detect_format(spec: str, rows: list[dict]) -> str:
    name = Path(spec).name.lower()
    for hint, fmt in _FILE_HINTS.items():
        if hint in name:
            return fmt
    fields = set(rows[0]) if rows else set()
    if {"question", "answer"} <= fields and any("####" in str(r.get("answer", "")) for r in rows[:20]):
        return "gsm8k"
    if "final_answer" in fields:
        return "olympiad"
    if {"problem", "answer"} <= fields:
        return "math500"
    if {"problem", "solution"} <= fields:
        return "minerva"
    return "plain"


def load_source(spec: str, fmt: str = "auto", question_field: str | None = None, answer_field: str | None = None,
                hub_split: str = "test", world: Callable[[str], list] | None = None) -> Loaded:
    """Records of a prompt source; rows without a gold answer are dropped and counted."""
    if spec.startswith("world:") or spec == "world":
        split = spec.partition(":")[2] or "train"
        if world is None:
            raise SourceError("the embedded world is not available to this command")
        problems = world(split)
        records = [{"prompt_id": p.id, "question": p.question, "gold": p.gold} for p in problems]
        return Loaded(records, 0, {"kind": "world", "split": split})

    rows, kind = load_rows(spec, hub_split)
    fmt = detect_format(spec, rows) if fmt == "auto" else fmt
    if fmt == "plain" or question_field or answer_field:
        base = FORMATS.get(fmt)
        layout = Format(question_field or (base.question if base else "question"),
                        answer_field or (base.gold if base else "answer"))
    elif fmt in FORMATS:
        layout = FORMATS[fmt]
    else:
        raise SourceError(f"unknown format {fmt!r}; known: auto, plain, {', '.join(FORMATS)}")
    if rows:
        fields = set(rows[0])
        needed = [layout.question] + ([layout.gold] if isinstance(layout.gold, str) else [])
        missing = [f for f in needed if f not in fields]
        if missing:
            raise SourceError(f"{spec} has no field {missing[0]!r}; fields: {', '.join(sorted(fields))}")

    stem = Path(spec).stem if kind != "hub" else spec.replace("/", "-")
    records, skipped = [], 0
    for i, row in enumerate(rows):
        try:
            gold = layout.gold(row) if callable(layout.gold) else row.get(layout.gold)
        except (KeyError, TypeError, AttributeError):  # a row without the benchmark's gold field
            gold = None
        gold = "" if gold is None else str(gold).strip()
        if not gold:
            skipped += 1
            continue
        pid = next((str(row[f]) for f in layout.id_fields if row.get(f) not in (None, "")), f"{stem}-{i:06d}")
        records.append({"prompt_id": pid, "question": str(row[layout.question]), "gold": gold})
    if len({r["prompt_id"] for r in records}) != len(records):  # ids must be unique to resume by them
        records = [{**r, "prompt_id": f"{stem}-{i:06d}"} for i, r in enumerate(records)]
    return Loaded(records, skipped, {"kind": kind, "path": spec, "format": fmt, "question_field": layout.question,
                                     "answer_field": layout.gold if isinstance(layout.gold, str) else fmt})
