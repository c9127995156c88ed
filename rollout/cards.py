"""Dataset cards in the Hugging Face format, written from a dataset's manifest and its shards' schema.

``DIR/README.md`` opens with a YAML header whose ``configs`` name the parquet shards and whose
``dataset_info.features`` give the contract's columns, so ``datasets.load_dataset(DIR)`` needs no
argument and the Hub shows the schema; its body says where the rows came from (source, model,
template, sampling, verifier and extraction) and what they hold (pass rate, correct-per-prompt
histogram). Every field is read from the manifest, and the card is rewritten (atomically) whenever
the manifest changes for good: a finished collection or import, a rescore, a merge. It lives in
``rewards``, the package every other may import, because rescore (here) rewrites datasets too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from rollout.files import atomic_write

CARD = "README.md"


DTYPES = {pa.string(): "string", pa.int32(): "int32", pa.float32(): "float32"}


def _feature(field: pa.Field) -> dict:
    if pa.types.is_list(field.type):
        return {"name": field.name, "list": DTYPES[field.type.value_type]}
    return {"name": field.name, "dtype": DTYPES[field.type]}


def card_header(schema: pa.Schema | None, shards: list[str]) -> dict:
    """The manifest's shards by name (not a glob: a rescore's old shards, about to go, are not data)."""
    features = {"dataset_info": {"features": [_feature(f) for f in schema]}} if schema is not None else {}
    files = [f"data/{name}" for name in shards] or ["data/*.parquet"]
    return {"configs": [{"config_name": "default", "data_files": [{"split": "train", "path": files}]}],
            **features,
            "tags": ["offline-rl", "math", "reasoning"]}


def card_fields(manifest: dict) -> dict:
    """What the card says, each taken from the manifest (a test compares them)."""
    counts, summary = manifest.get("counts", {}), manifest.get("summary", {})
    sampling = manifest.get("sampling") or {}
    return {
        "kind": manifest.get("kind", "samples"),
        "source": manifest.get("source"),
        "model": manifest.get("model"),
        "template": manifest.get("template"),
        "sampling": sampling,
        "seed": manifest.get("seed"),
        "verifier_version": manifest.get("verifier_version"),
        "extraction": manifest.get("extraction"),
        "prompts": counts.get("prompts"),
        "responses": counts.get("responses"),
        "accepted": counts.get("accepted"),
        "pass_rate": manifest.get("pass_rate"),
        "correct_per_prompt": summary.get("correct_per_prompt"),
        "complete": manifest.get("complete"),
        "git_commit": manifest.get("git_commit"),
    }


def dataset_card(manifest: dict, schema: pa.Schema | None = None) -> str:
    f = card_fields(manifest)
    header = yaml.safe_dump(card_header(schema, manifest.get("shards", [])), sort_keys=False)
    what = "demonstrations (given solutions, no behaviour log-probs)" if f["kind"] == "demonstrations" else \
        "responses sampled by the model, with the sampling policy's per-token log-probs"
    sampling = ", ".join(f"{k} {v}" for k, v in f["sampling"].items()) or "–"
    histogram = f["correct_per_prompt"] or {}
    lines = [
        "---", header.rstrip(), "---", "",
        "# Offline RL dataset", "",
        f"An offline-rl dataset of {what}, verified by the toolkit's math verifier. "
        "One row per response; the columns are the toolkit's data contract (`rollout/dataset.py`): exact prompt "
        "and response token ids, never re-tokenised.", "",
        "| field | value |", "|---|---|",
        f"| source | `{_flat(f['source'])}` |",
        f"| model | `{f['model']}` |",
        f"| template | `{f['template']}` |",
        f"| sampling | {sampling} |",
        f"| seed | {f['seed']} |",
        f"| verifier | `{f['verifier_version']}`, extraction `{f['extraction']}` |",
        f"| prompts / responses / accepted | {f['prompts']} / {f['responses']} / {f['accepted']} |",
        f"| pass rate | {_number(f['pass_rate'])} |",
        f"| complete | {f['complete']} |",
        f"| toolkit commit | `{f['git_commit']}` |", "",
    ]
    if histogram:
        lines += ["Correct responses per prompt:", "",
                  "| " + " | ".join(histogram) + " |", "|" + "---:|" * len(histogram),
                  "| " + " | ".join(str(v) for v in histogram.values()) + " |", ""]
    lines += ["```python", "from datasets import load_dataset", "rows = load_dataset(\"DIR\")[\"train\"]", "```",
              "`manifest.json` beside this card holds everything above and more (shards, wall time, identity).", ""]
    return "\n".join(lines)


def write_dataset_card(out: str | Path) -> Path:
    """``OUT/README.md`` from ``OUT/manifest.json`` and the first shard's schema (the contract's columns)."""
    out = Path(out)
    manifest = json.loads((out / "manifest.json").read_text())
    shards = [out / "data" / name for name in manifest.get("shards", [])]
    schema = pq.read_schema(shards[0]) if shards and shards[0].exists() else None
    text = dataset_card(manifest, schema).encode()
    atomic_write(out / CARD, lambda f: f.write(text))
    return out / CARD


def _flat(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def _number(value) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else str(value)
