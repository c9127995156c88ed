"""``bin/import``: demonstrations (a question and a worked solution) as an offline dataset.

The rows follow the dataset contract of ``bin/collect`` (``rollout/dataset.py``), one per
demonstration, with ``origin = "demonstration"`` and no behaviour log-probs (null: no policy
sampled them). Each question is rendered with the same templates as collect; the solution's tokens
follow, then EOS. ``pred`` and ``reward`` verify the solution's own final answer against the gold
through the one scoring path (``rewards.score_batch_detailed``): a demonstration whose answer
disagrees is kept with reward 0 and counted (``counts.disagreeing``), so the accepted view leaves it
out and the all view keeps it.

Field layouts (``--format``; ``auto`` guesses from the fields):
  numina     problem, solution (NuminaMath-CoT); gold: the solution's last box
  math       problem, solution (MATH); gold: the solution's last box
  metamath   query, response (MetaMathQA); gold: after "The answer is:"
  gsm8k      question, answer (GSM8K); the answer is the solution, its "#### N" the gold
  openr1     problem, solution, answer (OpenR1-Math); gold: answer
  messages   messages: a user turn, then an assistant turn (the solution); gold: an "answer" field, else
             the solution's last box
  plain      --question-field, --solution-field, optionally --answer-field
Where the gold is read off the solution itself (numina, math, metamath), "agrees" means only that
the solution states a final answer. Rows stream from the source in bounded memory.
"""

from __future__ import annotations

import csv
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

import rewards
from rewards.extract import extract_boxed
from rollout.dataset import DatasetWriter, quiet_datasets
from rollout.engines import context_length
from rollout.files import hold_directory, read_text
from rollout.models import load_tokenizer
from rollout.runtime import UsageError, parse_config, print_config, save_config
from rollout.sources import SourceError, load_saved
from rollout.templates import TEMPLATES, Template, TemplateError


@dataclass
class ImportConfig:
    source: str = field(default=None, metadata={"help": "world:SPLIT, a JSONL/JSON/Parquet/CSV file, a save_to_disk directory, or a hub dataset name (required)"})
    out: str = field(default=None, metadata={"help": "output directory of the offline dataset (required)"})
    model: str = field(default=None, metadata={"help": "model whose tokenizer and context length are used (default: the embedded base model)"})
    format: str = field(default="auto", metadata={"help": "field layout: auto, numina, math, metamath, gsm8k, openr1, messages, plain"})
    question_field: str = field(default=None, metadata={"help": "plain: the field holding the question", "advanced": True})
    solution_field: str = field(default=None, metadata={"help": "plain: the field holding the worked solution", "advanced": True})
    answer_field: str = field(default=None, metadata={"help": "plain: the field holding the gold answer (optional)", "advanced": True})
    hub_split: str = field(default="train", metadata={"help": "split of a hub or save_to_disk dataset", "advanced": True})
    template: str = field(default=None, metadata={"help": f"prompt template: {', '.join(TEMPLATES)}, or a file holding {{question}} (default: world for the world, else qwen-boxed)"})
    prompts: int = field(default=None, metadata={"help": "import at most N rows (each a prompt and its solution)", "min": 1})
    max_model_len: int = field(default=None, metadata={"help": "longest prompt + solution in tokens (default: the model's context)", "min": 1, "advanced": True})
    shard_size: int = field(default=10000, metadata={"help": "rows per parquet shard", "min": 1, "advanced": True})
    extraction: str = field(default="qwen", metadata={"help": "how the solution's final answer is read: boxed, qwen (box, 'the answer is', else the last number: reads GSM8K's '#### N'), math-verify", "choices": list(rewards.EXTRACTIONS)})
    scoring_deadline: float = field(default=rewards.DEFAULT_DEADLINE_SECONDS, metadata={"help": "seconds one solution may take to score", "above": 0, "advanced": True})
    force: bool = field(default=False, metadata={"help": "write into an output directory bin/import did not make"})


@dataclass(frozen=True)
class Layout:
    question: str | None
    solution: str | None
    answer: str | None = None  # a gold field; None: the gold is read off the solution
    messages: bool = False


def _boxed_gold(solution: str) -> str:
    return extract_boxed(solution)


def _metamath_gold(solution: str) -> str:
    found = re.findall(r"The answer is:?\s*(.+?)\s*$", solution.strip())
    return found[-1] if found else ""


def _gsm8k_gold(solution: str) -> str:
    return solution.rsplit("####", 1)[1].strip().replace(",", "") if "####" in solution else ""


LAYOUTS = {
    "numina": Layout("problem", "solution"),
    "math": Layout("problem", "solution"),
    "metamath": Layout("query", "response"),
    "gsm8k": Layout("question", "answer"),
    "openr1": Layout("problem", "solution", "answer"),
    "messages": Layout(None, None, messages=True),
}
# how a layout without a gold field reads the gold off the solution
SOLUTION_GOLDS = {"numina": _boxed_gold, "math": _boxed_gold, "metamath": _metamath_gold, "gsm8k": _gsm8k_gold,
                  "messages": _boxed_gold, "plain": _boxed_gold}


def detect_layout(fields: set[str]) -> str:
    if {"problem", "solution", "answer"} <= fields:
        return "openr1"
    if {"problem", "solution"} <= fields:
        return "numina"
    if {"query", "response"} <= fields:
        return "metamath"
    if {"question", "answer"} <= fields:
        return "gsm8k"
    if "messages" in fields:
        return "messages"
    raise SourceError(f"no known demonstration layout in fields {', '.join(sorted(fields))}; "
                      "name them with --format plain --question-field Q --solution-field S")


def iter_rows(spec: str, hub_split: str) -> tuple[Iterator[dict], int | None]:
    """Rows of a local file, a save_to_disk directory or a hub dataset, streamed, and their number if known."""
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix == ".jsonl":
            def lines():
                with path.open(encoding="utf-8", errors="strict") as f:
                    for number, line in enumerate(f, 1):
                        if line.strip():
                            try:
                                yield json.loads(line)
                            except ValueError:
                                raise SourceError(f"{path}:{number}: not a JSON object") from None
            return lines(), None
        if path.suffix == ".json":
            rows = json.loads(read_text(path))
            if not isinstance(rows, list):
                raise SourceError(f"{path}: expected a JSON list of objects")
            return iter(rows), len(rows)
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            file = pq.ParquetFile(path)
            return (row for batch in file.iter_batches(batch_size=1024) for row in batch.to_pylist()), \
                file.metadata.num_rows
        if path.suffix == ".csv":
            def records():
                with path.open(encoding="utf-8", newline="") as f:
                    yield from csv.DictReader(f)
            return records(), None
        raise SourceError(f"unsupported demonstration file type {path.suffix!r}; use .jsonl, .json, .parquet or .csv")
    import datasets

    if path.is_dir():
        ds = load_saved(path, hub_split)
        return iter(ds), len(ds)
    if "/" in spec and not spec.startswith((".", "/", "~")) and spec.count("/") == 1:
        try:  # a hub dataset, streamed: real code, exercised wherever the hub is reachable
            with quiet_datasets():
                return iter(datasets.load_dataset(spec, split=hub_split, streaming=True)), None
        except Exception as e:
            raise SourceError(f"cannot load hub dataset {spec}: {str(e).splitlines()[0]}") from None
    raise SourceError(f"demonstration source not found: {spec}")


def _text(value) -> str:
    return "" if value is None else str(value)


def demonstration(row: dict, layout_name: str, layout: Layout, number: int) -> tuple[str, str, str]:
    """(question, solution, gold) of one row; SourceError naming the row if a field is missing."""
    if not isinstance(row, dict):
        raise SourceError(f"row {number} is not an object")
    if layout.messages:
        turns = row.get("messages")
        if not isinstance(turns, list):
            raise SourceError(f"row {number} has no messages list")
        user = next((t.get("content") for t in turns if isinstance(t, dict) and t.get("role") == "user"), None)
        assistant = next((t.get("content") for t in turns if isinstance(t, dict) and t.get("role") == "assistant"), None)
        if user is None or assistant is None:
            raise SourceError(f"row {number}: messages need a user turn and an assistant turn")
        question, solution = _text(user), _text(assistant)
        gold = _text(row.get("answer")).strip()
    else:
        for name in (layout.question, layout.solution):
            if name not in row:
                raise SourceError(f"row {number} has no field {name!r}; fields: {', '.join(sorted(row))}")
        question, solution = _text(row[layout.question]), _text(row[layout.solution])
        gold = _text(row.get(layout.answer)).strip() if layout.answer else ""
    if not gold and not layout.answer:
        gold = SOLUTION_GOLDS.get(layout_name, _boxed_gold)(solution)
    return question, solution, gold


def _world_rows(split: str, world) -> Iterator[dict]:
    for p in world(split):
        yield {"prompt_id": p.id, "problem": p.question, "solution": p.solution, "answer": p.gold}


def run_import(cfg: ImportConfig, *, world=None, default_model: str | None = None) -> dict:
    """``bin/import``. ``world``: the loader of ``world:SPLIT`` sources."""
    if not cfg.source or not cfg.out:
        raise UsageError("--source and --out are required")
    model = cfg.model or default_model
    rows, total, layout_name, layout, description = open_source(cfg, world)
    out = Path(cfg.out)
    tokenizer = load_tokenizer(model)
    try:
        template = Template(cfg.template or ("world" if description["kind"] == "world" else "qwen-boxed"), tokenizer)
    except (TemplateError, SourceError) as e:
        raise UsageError(str(e)) from None
    hold_directory(out, "import", force=cfg.force)
    print_config(cfg)
    for old in (out / "data").glob("shard-*.parquet"):  # an import is cheap and deterministic: it starts over
        old.unlink()
    (out / "manifest.json").unlink(missing_ok=True)
    return write_demonstrations(cfg, model, tokenizer, template, rows, total, layout_name, layout, description, out)


def main(argv: list[str] | None = None, **kwargs) -> dict:
    return run_import(parse_config(ImportConfig, argv, "import", __doc__), **kwargs)


def open_source(cfg: ImportConfig, world) -> tuple[Iterator[dict], int | None, str, Layout, dict]:
    """The source's rows (and their number, when known), its layout and how the manifest describes it."""
    if cfg.source.startswith("world:") or cfg.source == "world":
        if world is None:
            raise UsageError("the embedded world is not available to this command")
        split = cfg.source.partition(":")[2] or "train"
        try:
            world(split)
        except ValueError as e:
            raise UsageError(str(e)) from None
        return _world_rows(split, world), None, "openr1", Layout("problem", "solution", "answer"), {"kind": "world", "split": split}
    try:
        rows, total = iter_rows(cfg.source, cfg.hub_split)
    except SourceError as e:
        raise UsageError(str(e)) from None
    first = next(rows, None)
    if first is None:
        raise UsageError(f"{cfg.source} holds no rows")
    rows = _chain(first, rows)
    fmt = cfg.format
    if fmt == "plain" or cfg.question_field or cfg.solution_field:
        if not (cfg.question_field and cfg.solution_field):
            raise UsageError("--format plain needs --question-field and --solution-field")
        fmt, layout = "plain", Layout(cfg.question_field, cfg.solution_field, cfg.answer_field)
    else:
        try:
            fmt = detect_layout(set(first)) if fmt == "auto" else fmt
        except SourceError as e:
            raise UsageError(str(e)) from None
        if fmt not in LAYOUTS:
            raise UsageError(f"unknown format {cfg.format!r}; known: auto, plain, {', '.join(LAYOUTS)}")
        layout = LAYOUTS[fmt]
    description = {"kind": "file" if Path(cfg.source).exists() else "hub", "path": cfg.source, "format": fmt}
    return rows, total, fmt, layout, description


def _chain(first, rest):
    yield first
    yield from rest


def write_demonstrations(cfg: ImportConfig, model: str, tokenizer, template: Template, rows: Iterator[dict],
                         total: int | None, layout_name: str, layout: Layout, description: dict, out: Path) -> dict:
    start = time.time()
    writer = DatasetWriter(out, {
        "kind": "demonstrations", "model": model, "source": description, "template": template.name,
        "sampling": None, "extraction": cfg.extraction, "verifier_version": rewards.VERIFIER_VERSION,
        "identity": {"source": description, "model": model, "template": template.name}, "complete": False,
    })
    save_config(cfg, out / "import_config.json")
    max_len = context_length(model, cfg.max_model_len)
    eos = tokenizer.eos_token_id
    counts = {"disagreeing": 0, "without_gold": 0, "too_long": 0}
    stem = Path(cfg.source).stem if Path(cfg.source).exists() else cfg.source.replace("/", "-").replace(":", "-")
    bar = tqdm(total=min(total, cfg.prompts) if total and cfg.prompts else (total or cfg.prompts), desc="import",
               unit="row")
    pending: list[dict] = []

    def flush():
        scored = rewards.score_batch_detailed([r["response"] for r in pending], [r["gold"] for r in pending],
                                              deadline=cfg.scoring_deadline, extraction=cfg.extraction)
        for r, pred, reward in zip(pending, scored.preds, scored.rewards, strict=True):
            r["pred"], r["reward"] = pred, reward if r["gold"] else 0.0
            counts["disagreeing"] += bool(r["gold"]) and reward != 1.0
        writer.write_shard(pending, scoring_timeouts=len(scored.timed_out))
        pending.clear()

    for number, row in enumerate(rows):
        if cfg.prompts is not None and number >= cfg.prompts:
            break
        try:
            question, solution, gold = demonstration(row, layout_name, layout, number)
        except SourceError as e:
            raise UsageError(f"{cfg.source}: {e}") from None
        prompt = template.render(question)
        prompt_ids = template.token_ids(prompt)
        separator = "" if not prompt or prompt[-1].isspace() else " "  # "Answer:" + " 5 + 3 = 8"
        response_ids = tokenizer(separator + solution, add_special_tokens=False)["input_ids"] + [eos]
        bar.update(1)
        if max_len is not None and len(prompt_ids) + len(response_ids) > max_len:
            counts["too_long"] += 1
            continue
        counts["without_gold"] += not gold
        pid = str(row.get("prompt_id") or row.get("id") or f"{stem}-{number:07d}")
        pending.append({"prompt_id": pid, "question": question, "gold": gold, "prompt": prompt,
                        "prompt_token_ids": prompt_ids, "response_token_ids": response_ids, "response": solution,
                        "behavior_logprobs": None, "sample_idx": 0, "finish_reason": "stop", "pred": "",
                        "reward": 0.0, "origin": "demonstration"})
        if len(pending) >= cfg.shard_size:
            flush()
    if pending:
        flush()
    bar.close()
    writer.manifest["counts"].update(counts)
    manifest = writer.finish(wall_seconds=round(time.time() - start, 2))
    c = manifest["counts"]
    print(f"imported {c['responses']} demonstrations -> {out}\n"
          f"  answer agrees with the gold: {c['accepted']}; disagrees (kept, reward 0): {c['disagreeing']}; "
          f"no gold: {c['without_gold']}\n  longer than the model's context, skipped: {c['too_long']}")
    return manifest
