"""Model cards for bin/train's checkpoints, in the Hugging Face format.

``MODEL/README.md`` says what made the weights: the base model, the learner and its settings, the
datasets it trained on with their manifests' identities, the steps, and every evaluation that
``bin/eval`` had recorded beside it (``MODEL/evaluations.json``) when the card was written. Written atomically
by bin/train when it saves the final model; an evaluation adds its record to ``evaluations.json`` (where it is, the
model and settings it is of, its results) and leaves the card alone, and :func:`write_model_card` regenerates the
card from those records. A record is dropped when its evaluation is replaced, and all of them when the weights are.
"""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

import yaml

from rollout.files import atomic_write

EVALUATIONS = "evaluations.json"


def is_our_checkpoint(model: str | Path) -> bool:
    path = Path(model)
    return path.is_dir() and (path / "train_config.json").is_file() and (path / "train_summary.json").is_file()


def dataset_identity(path: str) -> dict:
    """A dataset as a card names it: where, what sampled it, with what, and how many rows."""
    try:
        manifest = json.loads((Path(path) / "manifest.json").read_text())
    except (OSError, ValueError):
        return {"path": path}
    return {"path": path, "kind": manifest.get("kind", "samples"), "model": manifest.get("model"),
            "source": manifest.get("source"), "sampling": manifest.get("sampling"), "seed": manifest.get("seed"),
            "verifier_version": manifest.get("verifier_version"), "extraction": manifest.get("extraction"),
            "responses": manifest.get("counts", {}).get("responses"), "pass_rate": manifest.get("pass_rate"),
            "shards": len(manifest.get("shards", [])), "git_commit": manifest.get("git_commit")}


def model_card(model: Path) -> str:
    config = json.loads((model / "train_config.json").read_text())
    summary = json.loads((model / "train_summary.json").read_text())
    learner = (json.loads((model / "learner_config.json").read_text())
               if (model / "learner_config.json").exists() else {})
    evaluations = _read_evaluations(model)
    datasets = [dataset_identity(p) for p in str(config.get("data", "")).split(",") if p]
    header = {"base_model": config.get("model"), "library_name": "transformers",
              "tags": ["offline-rl", config.get("learner", "?"), "math", "reasoning"]}
    lines = ["---", yaml.safe_dump(header, sort_keys=False).rstrip(), "---", "",
             f"# {config.get('learner')} on {', '.join(Path(d['path']).name for d in datasets) or '?'}", "",
             f"Trained with offline-rl's `bin/train --learner {config.get('learner')}` from `{config.get('model')}`: "
             f"{summary.get('steps')} optimizer steps (steps {summary.get('first_step', 0) + 1}–"
             f"{summary.get('last_step', summary.get('steps'))}) on {summary.get('examples')} examples of the "
             f"`{config.get('view')}` view, batch {config.get('batch_size')} sequences per step, "
             f"peak lr {config.get('lr')}, seed {config.get('seed')}"
             + (f", continuing `{config['init_from']}`" if config.get("init_from") else "") + ".", "",
             *_fit(config),
             "## Learner settings", "", "```json", json.dumps(learner, indent=2), "```", "",
             "## Training data", ""]
    for d in datasets:
        lines.append(f"- `{d['path']}`: {d.get('kind')}, {d.get('responses')} rows from `{d.get('model')}`, "
                     f"sampling `{json.dumps(d.get('sampling'))}`, seed {d.get('seed')}, verifier "
                     f"`{d.get('verifier_version')}` ({d.get('extraction')}), pass rate {d.get('pass_rate')}, "
                     f"{d.get('shards')} shards, toolkit commit `{d.get('git_commit')}`")
    lines += ["", "## Evaluations", ""]
    if not evaluations:
        lines.append("None recorded when this card was written (`bin/eval --model THIS_DIR` records its results in "
                     "`evaluations.json`).")
    for name, e in evaluations.items():
        k = e.get("k")
        cells = ", ".join(f"{bench} {100 * m.get(f'avg@{k}', float('nan')):.1f}"
                          for bench, m in e.get("benchmarks", {}).items())
        lines.append(f"- `{name}` (k = {k}, temperature {e.get('temperature')}, seed {e.get('seed')}, "
                     f"extraction {e.get('extraction')}): avg@{k} {cells}")
    lines += ["", "`train_config.json` repeats the run (`bin/train --config`); "
                  "`metrics.jsonl` holds every logged step.", ""]
    return "\n".join(lines)


def _fit(config: dict) -> list[str]:
    """The precision, LoRA and activation checkpointing a run trained with (nothing for runs that predate them)."""
    if "precision" not in config:
        return []
    text = f"Precision {config['precision']} (float32 master weights and optimizer state)"
    if config.get("lora_rank"):
        text += (f"; LoRA rank {config['lora_rank']}, alpha {config.get('lora_alpha')} on "
                 f"`{config.get('lora_target_modules')}`" + (" with the embeddings and head trained"
                                                             if config.get("lora_train_embeddings") else "")
                 + ": the adapter in `adapter/`, merged into these weights")
    if config.get("gradient_checkpointing"):
        text += "; activation checkpointing"
    return [text + ".", ""]


def write_model_card(model: str | Path) -> Path:
    model = Path(model)
    text = model_card(model).encode()
    atomic_write(model / "README.md", lambda f: f.write(text))
    return model / "README.md"


def record_evaluation(model: str | Path, name: str, results: dict, out: Path | None = None,
                      identity: dict | None = None) -> None:
    """Add one evaluation's results to the checkpoint's ``evaluations.json`` (one writer at a time), with where the
    evaluation is (``out``, resolved; None: printed only) and what it is (``identity``: the model and its settings)."""
    model = Path(model)
    with (model / ".evaluations.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        evaluations = _read_evaluations(model)
        evaluations[name] = {"path": str(Path(out).resolve()) if out is not None else None, "identity": identity,
                             **{k: results.get(k) for k in ("k", "temperature", "top_p", "max_tokens", "seed",
                                                             "extraction", "verifier_version", "benchmarks")}}
        _write_evaluations(model, evaluations)


def forget_evaluation(model: str | Path, out: Path) -> None:
    """Drop the checkpoint's records of the evaluation in ``out`` (about to be replaced): a record never describes
    another evaluation than its own."""
    model, where = Path(model), Path(out).resolve()
    if not (model / EVALUATIONS).is_file():
        return
    with (model / ".evaluations.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        evaluations = _read_evaluations(model)
        kept = {name: e for name, e in evaluations.items()  # a record without "path" (older): its name is its --out
                if Path((e.get("path") if isinstance(e, dict) else None) or name).resolve() != where}
        if kept != evaluations:
            _write_evaluations(model, kept)


def _write_evaluations(model: Path, evaluations: dict) -> None:
    text = (json.dumps(evaluations, indent=2) + "\n").encode()
    atomic_write(model / EVALUATIONS, lambda f: f.write(text))


def _read_evaluations(model: Path) -> dict:
    try:
        return json.loads((model / EVALUATIONS).read_text())
    except (OSError, ValueError):
        return {}
