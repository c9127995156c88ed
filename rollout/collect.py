"""``bin/collect``: sample ``n`` responses per prompt, verify them, store an offline dataset."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

import rewards
from rollout.cli import UsageError, parse_config, print_config, save_config
from rollout.dataset import DatasetWriter
from rollout.engines import ENGINES, SamplingConfig
from rollout.templates import TEMPLATES, render


@dataclass
class CollectConfig:
    out: str = field(default=None, metadata={"help": "output directory of the offline dataset (required)"})
    model: str = field(default=None, metadata={"help": "checkpoint directory or hub name (default: the embedded base model)"})
    split: str = field(default="train", metadata={"help": "embedded world split to take prompts from"})
    prompts: str = field(default=None, metadata={"help": "JSONL file of prompts instead of the world (one object per line)"})
    question_field: str = field(default="question", metadata={"help": "JSONL field holding the question"})
    answer_field: str = field(default="answer", metadata={"help": "JSONL field holding the gold answer"})
    template: str = field(default=None, metadata={"help": f"prompt template: {', '.join(TEMPLATES)} (default: world for the world, qwen-boxed otherwise)"})
    n: int = field(default=4, metadata={"help": "responses sampled per prompt"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling threshold"})
    max_tokens: int = field(default=160, metadata={"help": "most tokens per response"})
    limit: int = field(default=None, metadata={"help": "use only the first N prompts"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    backend: str = field(default="vllm", metadata={"help": "generation engine: vllm or hf"})
    dtype: str = field(default="float32", metadata={"help": "model dtype in the engine (float32, bfloat16, auto)"})
    shard_size: int = field(default=256, metadata={"help": "prompts per parquet shard"})


def load_jsonl_prompts(path: str, question_field: str, answer_field: str) -> list[dict]:
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"prompt file not found: {file}")
    records = []
    for line_no, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise UsageError(f"{file}:{line_no} is not valid JSON") from None
        if question_field not in row or answer_field not in row:
            raise UsageError(f"{file}:{line_no} lacks field {question_field!r} or {answer_field!r}")
        records.append({"prompt_id": str(row.get("id", row.get("unique_id", f"{file.stem}-{line_no - 1:05d}"))),
                        "question": str(row[question_field]), "gold": str(row[answer_field])})
    return records


def resolve_model(model: str) -> str:
    """A local checkpoint directory, or a hub name passed through for the engine to fetch."""
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UsageError(f"{path} is not a model checkpoint (no config.json)")
        return str(path)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", model) and not model.startswith("."):
        return model  # looks like a hub name
    raise UsageError(f"model not found: {model}")


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def toolkit_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("offline-rl")
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None, world: Callable[[str], list] | None = None, default_model: str | None = None) -> dict:
    cfg = parse_config(CollectConfig, argv, "collect", __doc__)
    if cfg.out is None:
        raise UsageError("--out is required")
    if cfg.backend not in ENGINES:
        raise UsageError(f"unknown backend {cfg.backend!r}; known: {', '.join(ENGINES)}")
    if cfg.n < 1 or cfg.max_tokens < 1 or cfg.temperature < 0 or not 0 < cfg.top_p <= 1:
        raise UsageError("need --n >= 1, --max-tokens >= 1, --temperature >= 0 and 0 < --top-p <= 1")
    model = resolve_model(cfg.model or default_model)
    template = cfg.template or ("world" if cfg.prompts is None else "qwen-boxed")
    if template not in TEMPLATES:
        raise UsageError(f"unknown template {template!r}; known: {', '.join(TEMPLATES)}")
    out = Path(cfg.out)
    if (out / "manifest.json").exists():
        raise UsageError(f"{out} already holds an offline dataset; choose another --out")

    if cfg.prompts is not None:
        records = load_jsonl_prompts(cfg.prompts, cfg.question_field, cfg.answer_field)
        source = {"kind": "jsonl", "path": str(cfg.prompts)}
    else:
        try:
            records = [{"prompt_id": p.id, "question": p.question, "gold": p.gold} for p in world(cfg.split)]
        except ValueError as e:
            raise UsageError(str(e)) from None
        source = {"kind": "world", "split": cfg.split}
    records = records[: cfg.limit] if cfg.limit is not None else records
    if not records:
        raise UsageError(f"no prompts to collect from {cfg.prompts or 'world split ' + cfg.split}")
    print_config(cfg)
    save_config(cfg, out / "collect_config.json")
    return collect(cfg, model, template, records, source, out)


def collect(cfg: CollectConfig, model: str, template: str, records: list[dict], source: dict, out: Path) -> dict:
    start = time.time()
    try:
        engine = ENGINES[cfg.backend](model, seed=cfg.seed, dtype=cfg.dtype)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot load model {model}: {str(e).splitlines()[0]}") from None
    tokenizer = engine.tokenizer
    sampling = SamplingConfig(n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens)
    writer = DatasetWriter(out, {
        "toolkit_version": toolkit_version(), "git_commit": git_commit(), "model": model, "source": source,
        "template": template, "sampling": asdict(sampling), "seed": cfg.seed, "backend": cfg.backend,
        "verifier_version": rewards.VERIFIER_VERSION, "complete": False,
    })
    accepted = responses = tokens = 0
    bar = tqdm(total=len(records), desc="collect", unit="prompt")
    for begin in range(0, len(records), cfg.shard_size):
        chunk = records[begin : begin + cfg.shard_size]
        prompts = [render(template, r["question"]) for r in chunk]
        prompt_ids = [tokenizer(p)["input_ids"] for p in prompts]
        outputs = engine.generate(prompt_ids, sampling, use_tqdm=False)
        rows = []
        for record, prompt, ids, samples in zip(chunk, prompts, prompt_ids, outputs, strict=True):
            for idx, s in enumerate(samples):
                pred = rewards.extract_answer(s.text)
                reward = 1.0 if rewards.equivalent(pred, record["gold"]) else 0.0
                rows.append({**record, "prompt": prompt, "prompt_token_ids": ids, "response_token_ids": s.token_ids,
                             "response": s.text, "behavior_logprobs": s.logprobs, "sample_idx": idx,
                             "finish_reason": s.finish_reason, "pred": pred, "reward": reward})
                accepted += reward == 1.0
                responses += 1
                tokens += len(s.token_ids)
        writer.write_shard(rows)
        bar.update(len(chunk))
        elapsed = time.time() - start
        bar.set_postfix(pass_rate=f"{accepted / responses:.3f}", tok_s=f"{tokens / elapsed:.0f}")
    bar.close()
    engine.close()
    manifest = writer.finish(wall_seconds=round(time.time() - start, 2))
    counts = manifest["counts"]
    print(f"collected {counts['responses']} responses to {counts['prompts']} prompts: "
          f"{counts['accepted']} accepted (pass rate {manifest['pass_rate']:.3f}) -> {out}")
    return manifest
