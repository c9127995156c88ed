"""``bin/import``: demonstrations (a question and a worked solution) as an offline dataset.

The rows follow the dataset contract of ``bin/collect`` (``rollout/dataset.py``), one per
demonstration, with ``origin = "demonstration"`` and no behaviour log-probs (null: no policy
sampled them). Each question is rendered with the same templates as collect; the solution's tokens
follow, then EOS (with the model's chat template: the token it closes a turn with, ``<|im_end|>`` in ChatML, as a
sampled response ends). ``pred`` and ``reward`` verify the solution's own final answer against the gold
through the one scoring path (``rewards.score_batch_detailed``): a demonstration whose answer
disagrees is kept with reward 0 and counted (``counts.disagreeing``), so the accepted view leaves it
out and the all view keeps it.

Field layouts (``--format``; ``auto`` guesses from the fields):
  numina     problem, solution (NuminaMath-CoT); gold: the solution's last box
  math       problem, solution (MATH); gold: the solution's last box
  metamath   query, response (MetaMathQA); gold: after "The answer is:"
  gsm8k      question, answer (GSM8K); the answer is the solution, its "#### N" the gold
  openr1     problem, solution, answer (OpenR1-Math); gold: answer. With ``generations`` (OpenR1-Math-220k): the
             first R1 trace that ``correctness_math_verify`` marks correct, not the reference solution; rows
             with none are skipped (counted: ``counts.unverified``)
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
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

import rewards
from rewards.extract import extract_boxed
from rollout.dataset import DatasetWriter, complete_manifests, quiet_datasets, read_rows
from rollout.engines import context_length
from rollout.files import Finished, TextError, hold_directory, read_text
from rollout.models import load_tokenizer
from rollout.runtime import CommandContext, UsageError, parse_config, print_config, save_config
from rollout.sources import SourceError, load_saved
from rollout.templates import TEMPLATES, Template, TemplateError


@dataclass
class ImportConfig:
    source: str = field(default=None, metadata={
        "help": "world:SPLIT, a JSONL/JSON/Parquet/CSV file, a save_to_disk directory, or a hub dataset "
                "name (required)"})
    out: str = field(default=None, metadata={"help": "output directory of the offline dataset (required)"})
    model: str = field(default=None, metadata={
        "help": "model whose tokenizer and context length are used (default: the embedded base model)"})
    format: str = field(default="auto", metadata={
        "help": "field layout: auto, numina, math, metamath, gsm8k, openr1, messages, plain"})
    question_field: str = field(default=None, metadata={
        "help": "plain: the field holding the question", "advanced": True})
    solution_field: str = field(default=None, metadata={
        "help": "plain: the field holding the worked solution", "advanced": True})
    answer_field: str = field(default=None, metadata={
        "help": "plain: the field holding the gold answer (optional)", "advanced": True})
    hub_split: str = field(default="train", metadata={
        "help": "split of a hub or save_to_disk dataset", "advanced": True})
    template: str = field(default=None, metadata={
        "help": f"prompt template: {', '.join(TEMPLATES)}, or a file holding {{question}} (default: world for the "
                "world, else qwen-boxed)"})
    prompts: int = field(default=None, metadata={
        "help": "import at most N rows (each a prompt and its solution)", "min": 1})
    max_model_len: int = field(default=None, metadata={
        "help": "longest prompt + solution in tokens (default: the model's context)", "min": 1, "advanced": True})
    shard_size: int = field(default=10000, metadata={"help": "rows per parquet shard", "min": 1, "advanced": True})
    extraction: str = field(default="qwen", metadata={
        "help": "how the solution's final answer is read: boxed, qwen (box, 'the answer is', else the last number: "
                "reads GSM8K's '#### N'), math-verify", "choices": list(rewards.EXTRACTIONS)})
    scoring_deadline: float = field(default=rewards.DEFAULT_DEADLINE_SECONDS, metadata={
        "help": "seconds one solution may take to score", "above": 0, "advanced": True})
    prompts_of: str = field(default=None, metadata={
        "help": "import only the rows whose prompt id this offline dataset holds (the world's reference solutions "
                "of a collection's prompts: --source world:train --prompts-of runs/data)", "advanced": True})
    force: bool = field(default=False, metadata={"help": "write into an output directory bin/import did not make, "
                                                 "or replace a finished import of other settings"})


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
    """Rows of a local file, a save_to_disk directory or a hub dataset, streamed, and their number if known.
    A file that is not what its suffix says (another encoding, broken JSON, not Parquet) is a SourceError naming
    the file, and the line where one applies; a UTF-8 byte-order mark is fine."""
    path = Path(spec).expanduser()
    if path.is_file():
        readers = {".jsonl": _jsonl_rows, ".json": _json_rows, ".parquet": _parquet_rows, ".csv": _csv_rows}
        if path.suffix not in readers:
            raise SourceError(f"unsupported demonstration file type {path.suffix!r}; use .jsonl, .json, .parquet "
                              "or .csv")
        return readers[path.suffix](path)
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


def _jsonl_rows(path: Path) -> tuple[Iterator[dict], None]:
    def lines():
        with path.open("rb") as f:
            for number, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError:
                    raise SourceError(f"{path} line {number}: not UTF-8 text") from None
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except ValueError:
                    raise SourceError(f"{path} line {number}: not a JSON object (.jsonl holds one per line)") from None
    return lines(), None


def _json_rows(path: Path) -> tuple[Iterator[dict], int]:
    try:
        rows = json.loads(read_text(path))
    except TextError as e:
        raise SourceError(str(e)) from None
    except ValueError as e:
        raise SourceError(f"{path} line {getattr(e, 'lineno', '?')}: not valid JSON (.json holds one list of "
                          "objects; one object per line is .jsonl)") from None
    if not isinstance(rows, list):
        raise SourceError(f"{path}: expected a JSON list of objects")
    return iter(rows), len(rows)


def _parquet_rows(path: Path) -> tuple[Iterator[dict], int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise SourceError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    return (row for batch in file.iter_batches(batch_size=1024) for row in batch.to_pylist()), file.metadata.num_rows


def _csv_rows(path: Path) -> tuple[Iterator[dict], None]:
    def records():
        try:
            with path.open(encoding="utf-8-sig", newline="") as f:
                yield from csv.DictReader(f)
        except UnicodeDecodeError:
            raise SourceError(f"{path}: not UTF-8 text") from None
        except csv.Error as e:
            raise SourceError(f"{path}: not a readable CSV file ({e})") from None
    return records(), None


def _text(value) -> str:
    return "" if value is None else str(value)


def _field(row: dict, name: str, number: int, what: str) -> str:
    """A text field of a row; a number is read as its text only for the gold; anything else is refused."""
    value = row.get(name)
    if isinstance(value, str):
        return value
    if what == "gold" and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise SourceError(f"row {number}: its {what} field {name!r} is {type(value).__name__}, not text")


def demonstration(row: dict, layout_name: str, layout: Layout, number: int) -> tuple[str, str, str] | None:
    """(question, solution, gold) of one row, or None for an OpenR1 row with no verified trace; SourceError naming
    the row if a field is missing or not text."""
    if not isinstance(row, dict):
        raise SourceError(f"row {number} is not an object")
    if layout.messages:
        question, solution = _messages(row, number)
        gold = _field(row, "answer", number, "gold").strip() if row.get("answer") is not None else ""
    else:
        for name in (layout.question, layout.solution, layout.answer):
            if name is not None and name not in row:
                raise SourceError(f"row {number} has no field {name!r}; fields: {', '.join(sorted(row))}")
        question = _field(row, layout.question, number, "question")
        solution = _field(row, layout.solution, number, "solution")
        gold = _field(row, layout.answer, number, "gold").strip() if layout.answer else ""
        if layout_name == "openr1" and "generations" in row:  # OpenR1-Math: the R1 traces, not the reference
            solution = _verified_trace(row, number)
            if solution is None:
                return None
    if not question.strip() or not solution.strip():
        raise SourceError(f"row {number}: empty question or solution")
    if not gold and not layout.answer:
        gold = SOLUTION_GOLDS.get(layout_name, _boxed_gold)(solution)
    return question, solution, gold


def _messages(row: dict, number: int) -> tuple[str, str]:
    """The first user turn and the assistant turn that answers it, in that order."""
    turns = row.get("messages")
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        raise SourceError(f"row {number} has no messages list")
    roles = [t.get("role") for t in turns]
    if "user" not in roles or "assistant" not in roles[roles.index("user"):]:
        raise SourceError(f"row {number}: messages need a user turn followed by an assistant turn")
    user = roles.index("user")
    assistant = roles.index("assistant", user)
    question, solution = turns[user].get("content"), turns[assistant].get("content")
    if not isinstance(question, str) or not isinstance(solution, str):
        raise SourceError(f"row {number}: a message's content is not text")
    return question, solution


def _verified_trace(row: dict, number: int) -> str | None:
    """OpenR1-Math's first R1 trace that math-verify marked correct (``correctness_math_verify``), if any."""
    traces, verified = row.get("generations"), row.get("correctness_math_verify")
    if not isinstance(traces, list) or not isinstance(verified, list) or len(traces) != len(verified):
        raise SourceError(f"row {number}: generations and correctness_math_verify must be lists of one length")
    found = next((trace for trace, ok in zip(traces, verified, strict=True) if ok is True), None)
    if found is not None and not isinstance(found, str):
        raise SourceError(f"row {number}: a generation is not text")
    return found


def _world_rows(split: str, world) -> Iterator[dict]:
    for p in world(split):
        yield {"prompt_id": p.id, "problem": p.question, "solution": p.solution, "answer": p.gold}


def run_import(cfg: ImportConfig, *, context: CommandContext | None = None) -> dict:
    """``bin/import``. From the ``context``: the loader of ``world:SPLIT`` sources, the model when none is named."""
    context = context or CommandContext()
    if not cfg.source or not cfg.out:
        raise UsageError("--source and --out are required")
    model = cfg.model or context.default_model
    rows, total, layout_name, layout, description = open_source(cfg, context.world)
    only = prompts_of(cfg, description, context.world) if cfg.prompts_of else None
    if only is not None:  # the manifest says which prompts were taken
        description = {**description, "prompts_of": cfg.prompts_of}
    if description["kind"] == "file":  # read through once first: a bad row is one line before anything is written
        check_rows(cfg, open_source(cfg, context.world)[0], layout_name, layout, only)
    out = Path(cfg.out)
    tokenizer = load_tokenizer(model)
    try:
        template = Template(cfg.template or ("world" if description["kind"] == "world" else "qwen-boxed"), tokenizer)
    except (TemplateError, SourceError) as e:
        raise UsageError(str(e)) from None
    settings = {**{k: v for k, v in asdict(cfg).items() if k not in ("out", "force")}, "model": model}
    hold_directory(out, "import", force=cfg.force, owned=is_import_directory,
                   finished=Finished("import of {source}", "manifest.json", settings, saved_settings))
    # an import is cheap and deterministic: it starts over, in a staging folder swapped in once it is whole, so
    # that a bad row or a full disk half-way leaves OUT as it was
    stage = out / ".import.partial"
    shutil.rmtree(stage, ignore_errors=True)
    try:
        print_config(cfg, out=out, save_in=stage)  # swapped in with the rest
        manifest = write_demonstrations(cfg, model, tokenizer, template, rows, total, layout_name, layout,
                                        description, stage, only)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    shutil.rmtree(out / "data", ignore_errors=True)
    for path in sorted(stage.iterdir(), key=lambda p: p.name == "manifest.json"):  # the manifest last
        path.replace(out / path.name)
    stage.rmdir()
    return manifest


def prompts_of(cfg: ImportConfig, description: dict, world) -> set[str]:
    """The prompt ids of ``--prompts-of``'s dataset; for a world source, each checked to be one of its split's."""
    ids = {r["prompt_id"] for path in complete_manifests(cfg.prompts_of) for r in read_rows(path, ["prompt_id"])}
    if description["kind"] == "world":
        foreign = sorted(ids - {p.id for p in world(description["split"])})
        if foreign:
            raise UsageError(f"--prompts-of {cfg.prompts_of} holds {len(foreign)} prompts that {cfg.source} does not "
                             f"(e.g. {foreign[0]}): it was not drawn from them")
    return ids


def check_rows(cfg: ImportConfig, rows: Iterator[dict], layout_name: str, layout: Layout,
               only: set[str] | None = None) -> None:
    """Every row the import would take readable, of the right field types, under a unique id (UsageError if not)."""
    seen: set[str] = set()
    for number, row, found in demonstrations(rows, cfg, layout_name, layout, only):
        if found is not None:
            _unique_id(row_id(row, number, _stem(cfg.source)), seen, number, cfg.source)


def demonstrations(rows: Iterator[dict], cfg: ImportConfig, layout_name: str, layout: Layout,
                   only: set[str] | None = None):
    """(number, row, (question, solution, gold) or None) of the first ``--prompts`` rows (those of ``only``'s prompt
    ids, when given); UsageError naming a bad one."""
    stem = _stem(cfg.source)
    for number, row in enumerate(_checked(rows, cfg.source)):
        if cfg.prompts is not None and number >= cfg.prompts:
            return
        if only is not None and row_id(row, number, stem) not in only:
            continue
        try:
            yield number, row, demonstration(row, layout_name, layout, number)
        except SourceError as e:
            raise UsageError(f"{cfg.source}: {e}") from None


def row_id(row: dict, number: int, stem: str) -> str:
    return str(row.get("prompt_id") or row.get("id") or f"{stem}-{number:07d}")


def _stem(source: str) -> str:
    return Path(source).stem if Path(source).exists() else source.replace("/", "-").replace(":", "-")


def _unique_id(pid: str, seen: set[str], number: int, source: str) -> None:
    if pid in seen:
        raise UsageError(f"{source}: row {number} repeats the id {pid!r} of an earlier row; ids must be unique")
    seen.add(pid)


def saved_settings(out: Path) -> dict:
    """The settings of the finished import in ``out``, with the model whose tokenizer it used."""
    return {**json.loads((out / "import_config.json").read_text()), "model": json.loads(
        (out / "manifest.json").read_text())["model"]}


def is_import_directory(out: Path) -> bool:
    """What an import wrote, finished or cut short (a full disk): its configuration, or a demonstrations manifest."""
    if (out / "import_config.json").is_file():
        return True
    try:
        return json.loads((out / "manifest.json").read_text()).get("kind") == "demonstrations"
    except (OSError, ValueError, AttributeError):
        return False


def main(argv: list[str] | None = None, *, context: CommandContext | None = None) -> dict:
    return run_import(parse_config(ImportConfig, argv, "import", __doc__), context=context)


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
        return (_world_rows(split, world), None, "openr1", Layout("problem", "solution", "answer"),
                {"kind": "world", "split": split})
    try:
        rows, total = iter_rows(cfg.source, cfg.hub_split)
    except SourceError as e:
        raise UsageError(str(e)) from None
    try:
        first = next(rows, None)
    except SourceError as e:
        raise UsageError(str(e)) from None
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


def _checked(rows: Iterator[dict], source: str) -> Iterator[dict]:
    """The source's rows; a row the reader cannot read (bad encoding, broken JSON) is one line, mid-stream too."""
    try:
        yield from rows
    except SourceError as e:
        raise UsageError(f"{source}: {e}" if not str(e).startswith(source) else str(e)) from None


def write_demonstrations(cfg: ImportConfig, model: str, tokenizer, template: Template, rows: Iterator[dict],
                         total: int | None, layout_name: str, layout: Layout, description: dict, out: Path,
                         only: set[str] | None = None) -> dict:
    start = time.time()
    writer = DatasetWriter(out, {
        "kind": "demonstrations", "model": model, "source": description, "template": template.name,
        "sampling": None, "extraction": cfg.extraction, "verifier_version": rewards.VERIFIER_VERSION,
        "identity": {"source": description, "model": model, "template": template.name}, "complete": False,
    })
    save_config(cfg, out / "import_config.json")
    max_len = context_length(model, cfg.max_model_len)
    # the token a response ends in: what the chat template closes a turn with, else EOS (a sampled response's last)
    end = tokenizer.convert_tokens_to_ids(template.end_of_turn) if template.end_of_turn else tokenizer.eos_token_id
    counts = {"disagreeing": 0, "without_gold": 0, "too_long": 0, "unverified": 0}
    seen: set[str] = set()
    stem = _stem(cfg.source)
    if only is not None:
        total = min(total or len(only), len(only))
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

    for number, row, found in demonstrations(rows, cfg, layout_name, layout, only):
        if found is None:
            counts["unverified"] += 1
            bar.update(1)
            continue
        question, solution, gold = found
        prompt = template.render(question)
        prompt_ids = template.token_ids(prompt)
        separator = "" if not prompt or prompt[-1].isspace() else " "  # "Answer:" + " 5 + 3 = 8"
        response_ids = tokenizer(separator + solution, add_special_tokens=False)["input_ids"] + [end]
        bar.update(1)
        if max_len is not None and len(prompt_ids) + len(response_ids) > max_len:
            counts["too_long"] += 1
            continue
        counts["without_gold"] += not gold
        pid = row_id(row, number, stem)
        _unique_id(pid, seen, number, cfg.source)
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
    print(f"imported {c['responses']} demonstrations -> {out.parent if out.name == '.import.partial' else out}\n"
          f"  answer agrees with the gold: {c['accepted']}; disagrees (kept, reward 0): {c['disagreeing']}; "
          f"no gold: {c['without_gold']}\n  longer than the model's context, skipped: {c['too_long']}")
    return manifest
