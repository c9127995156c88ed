"""``bin/export``: an offline dataset as the rows TRL's trainers take, with a dataset card.

- ``trl-sft``: ``prompt`` / ``completion`` for ``SFTTrainer`` — the accepted view (verified samples that
  ended by themselves, demonstrations agreeing with their gold; ``--include-truncated`` as in bin/train);
- ``trl-dpo``: ``prompt`` / ``chosen`` / ``rejected`` for ``DPOTrainer`` — pairs built by the ``dpo``
  learner's own rules (``--pairing``, never identical responses, never a truncated chosen);
- ``trl-grpo``: ``prompt`` / ``answer`` for ``GRPOTrainer`` — each prompt once, its gold answer for a
  reward function (``rewards.score(completion, answer)`` is ours).

Rows keep ``prompt_id`` (and ``reward``, ``gold``) so they can be traced back. TRL tokenises text itself:
the exact sampled token ids stay in the source dataset, and a re-tokenised response can differ from them at
the edges (our learners never re-tokenise). ``OUT`` gets ``data/train.parquet``, ``export.json`` (what was
exported from what) and a ``README.md`` card, so ``datasets.load_dataset(OUT)`` reads it with no argument.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from offline_rl.views import make_pairs, sampled_examples
from rollout.dataset import atomic_write_bytes, complete_manifests, load_offline_dataset, write_json
from rollout.files import Finished, hold_directory
from rollout.runtime import CommandContext, UsageError, parse_config, print_config

FORMATS = {"trl-sft": ["prompt", "completion"], "trl-dpo": ["prompt", "chosen", "rejected"],
           "trl-grpo": ["prompt", "answer"]}


@dataclass
class ExportConfig:
    format: str = field(default=None, metadata={
        "help": "trl-sft (prompt/completion), trl-dpo (prompt/chosen/rejected), trl-grpo (prompt/answer) (required)",
        "choices": list(FORMATS)})
    data: str = field(default=None, metadata={
        "help": "offline dataset directory (or several, comma-separated); also the first positional argument"})
    out: str = field(default=None, metadata={"help": "output directory; also the second positional argument"})
    pairing: str = field(default="one", metadata={
        "help": "trl-dpo: pairs per prompt, as the dpo learner makes them: all, one, hardest",
        "choices": ["all", "one", "hardest"]})
    seed: int = field(default=0, metadata={"help": "trl-dpo: seed of --pairing one"})
    include_truncated: bool = field(default=False, metadata={
        "help": "keep accepted responses cut at the token limit (trl-sft's completions, trl-dpo's chosen)"})
    force: bool = field(default=False, metadata={"help": "write into an OUT that bin/export did not make, or replace "
                                                 "a finished export of other settings"})


SWITCHES = {"--include-truncated", "--no-include-truncated", "--force", "--no-force", "--verbose", "--help", "-h"}


def positional(argv: list[str]) -> list[str]:
    """``DIR OUT`` given as bare arguments -> ``--data DIR --out OUT``."""
    flags, bare, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-"):
            bare.append(arg)
        elif arg in SWITCHES or "=" in arg or i + 1 == len(argv):
            flags.append(arg)
        else:
            flags += [arg, argv[i + 1]]
            i += 1
        i += 1
    if len(bare) > 2:
        raise UsageError(f"expected DIR OUT, got {len(bare)} positional arguments: {' '.join(bare)}")
    return flags + [x for name, value in zip(["--data", "--out"], bare, strict=False) for x in (name, value)]


def main(argv: list[str] | None = None, *, context: CommandContext | None = None) -> dict:
    import sys

    return run_export(parse_config(ExportConfig, positional(list(sys.argv[1:] if argv is None else argv)), "export",
                                   __doc__), context=context)


def run_export(cfg: ExportConfig, *, context: CommandContext | None = None) -> dict:
    """``bin/export``: a dataset's rows as a TRL trainer takes them (it needs nothing of the ``context``)."""
    if cfg.format is None or cfg.data is None or cfg.out is None:
        raise UsageError("usage: export --format trl-sft|trl-dpo|trl-grpo DIR OUT")
    manifests = complete_manifests(cfg.data)
    dataset = load_offline_dataset(cfg.data)
    rows = export_rows(cfg, dataset)
    if not rows:
        raise UsageError(f"nothing to export as {cfg.format} from {cfg.data}: "
                         + ("no accepted responses" if cfg.format == "trl-sft" else "no preference pairs"))
    out = Path(cfg.out)
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("out", "force")}
    hold_directory(out, "export", force=cfg.force, owned=lambda d: (d / "export.json").is_file(),
                   finished=Finished("{format} export of {data}", "export.json", settings,
                                     lambda d: json.loads((d / "export.json").read_text())))
    print_config(cfg, out=out)
    table = pa.Table.from_pylist(rows)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(out / "data" / "train.parquet", sink.getvalue().to_pybytes())
    record = {**asdict(cfg), "rows": len(rows), "columns": table.column_names,
              "sources": {path: {k: m.get(k) for k in ("model", "source", "sampling", "verifier_version",
                                                       "extraction", "pass_rate")} for path, m in manifests.items()}}
    write_json(out / "export.json", record)
    atomic_write_bytes(out / "README.md", export_card(record, table.schema).encode())
    print(f"exported {len(rows)} {cfg.format} rows from {cfg.data} -> {out}")
    return record


def export_rows(cfg: ExportConfig, dataset) -> list[dict]:
    columns = ["prompt_id", "prompt", "response", "gold", "reward", "finish_reason", "response_token_ids"]
    table = dataset.select_columns(columns).to_list()
    if cfg.format == "trl-grpo":
        seen: dict[str, dict] = {}
        for r in table:
            seen.setdefault(r["prompt_id"], {"prompt_id": r["prompt_id"], "prompt": r["prompt"], "answer": r["gold"]})
        return list(seen.values())
    if cfg.format == "trl-sft":
        return [{"prompt_id": r["prompt_id"], "prompt": r["prompt"], "completion": r["response"], "gold": r["gold"]}
                for r in table if r["reward"] == 1.0 and r["response_token_ids"]
                and (cfg.include_truncated or r["finish_reason"] != "length")]
    # trl-dpo: the dpo learner's pairs, mapped back to their rows' text
    text = {(r["prompt_id"], tuple(r["response_token_ids"])): r for r in table}
    pairs = make_pairs(sampled_examples(dataset, accepted_only=False)[0], cfg.pairing, seed=cfg.seed,
                       include_truncated=cfg.include_truncated)
    rows = []
    for p in pairs:
        chosen = text[p.chosen.prompt_id, tuple(p.chosen.response_token_ids)]
        rejected = text[p.rejected.prompt_id, tuple(p.rejected.response_token_ids)]
        rows.append({"prompt_id": chosen["prompt_id"], "prompt": chosen["prompt"], "chosen": chosen["response"],
                     "rejected": rejected["response"], "gold": chosen["gold"]})
    return rows


def export_card(record: dict, schema: pa.Schema) -> str:
    header = {"configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train.parquet"}]}],
              "dataset_info": {"features": [{"name": f.name,
                                             "dtype": "string" if pa.types.is_string(f.type) else str(f.type)}
                                            for f in schema]},
              "tags": ["offline-rl", "trl", record["format"]]}
    trainer = {"trl-sft": "SFTTrainer", "trl-dpo": "DPOTrainer", "trl-grpo": "GRPOTrainer"}[record["format"]]
    sources = "\n".join(f"- `{path}`: model `{m.get('model')}`, verifier `{m.get('verifier_version')}` "
                        f"(extraction `{m.get('extraction')}`), pass rate {m.get('pass_rate')}"
                        for path, m in record["sources"].items())
    return "\n".join(["---", yaml.safe_dump(header, sort_keys=False).rstrip(), "---", "",
                      f"# {record['format']}: {record['rows']} rows for TRL's `{trainer}`", "",
                      "Exported by offline-rl's `bin/export` from:", "", sources, "",
                      f"Columns: {', '.join(f'`{c}`' for c in record['columns'])}. "
                      f"Settings: `{json.dumps({k: record[k] for k in ('pairing', 'seed', 'include_truncated')})}`.",
                      ""])
