"""``bin/eval``: sample k answers per problem with vLLM and report avg@k per benchmark."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import rewards
from offline_rl import world
from rollout.cli import UsageError, parse_config, print_config, save_config
from rollout.collect import resolve_model
from rollout.dataset import write_json
from rollout.engines import ENGINES, SamplingConfig, prompt_seed
from rollout.templates import render


@dataclass
class EvalConfig:
    model: str = field(default=None, metadata={"help": "checkpoint directory or hub name (default: the embedded base model)"})
    benchmarks: str = field(default="test-id,test-ood", metadata={"help": "comma-separated world splits to evaluate on"})
    k: int = field(default=4, metadata={"help": "samples per problem"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling threshold"})
    max_tokens: int = field(default=160, metadata={"help": "most tokens per response"})
    limit: int = field(default=None, metadata={"help": "evaluate only the first N problems of each benchmark"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    backend: str = field(default="vllm", metadata={"help": "generation engine: vllm or hf"})
    out: str = field(default=None, metadata={"help": "directory for results.json (default: print only)"})
    name: str = field(default=None, metadata={"help": "label of this model in tables (default: the model path's last part)"})


def avg_at_k(correct: list[list[float]]) -> float:
    """Mean accuracy over all k samples of all problems."""
    return sum(map(sum, correct)) / max(1, sum(map(len, correct)))


def main(argv: list[str] | None, default_model: str | None = None) -> dict:
    cfg = parse_config(EvalConfig, argv, "eval", __doc__)
    if cfg.k < 1:
        raise UsageError(f"--k must be at least 1 (got {cfg.k})")
    if cfg.backend not in ENGINES:
        raise UsageError(f"unknown backend {cfg.backend!r}; known: {', '.join(ENGINES)}")
    benchmarks = [b.strip() for b in cfg.benchmarks.split(",") if b.strip()]
    unknown = [b for b in benchmarks if b not in world.SPLITS]
    if unknown or not benchmarks:
        raise UsageError(f"unknown benchmark {','.join(unknown) or '(none)'}; known: {', '.join(world.SPLITS)}")
    model = resolve_model(cfg.model or default_model)
    print_config(cfg)
    results = evaluate(model, benchmarks, cfg)
    print(format_table({results["name"]: results}, benchmarks, cfg.k))
    if cfg.out:
        save_config(cfg, Path(cfg.out) / "eval_config.json")
        write_json(Path(cfg.out) / "results.json", results)
    return results


def evaluate(model: str, benchmarks: list[str], cfg: EvalConfig) -> dict:
    start = time.time()
    engine = ENGINES[cfg.backend](model, seed=cfg.seed, dtype="float32")
    sampling = SamplingConfig(n=cfg.k, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens)
    results = {"model": model, "name": cfg.name or Path(model).name, "k": cfg.k, "temperature": cfg.temperature,
               "benchmarks": {}}
    for bench in benchmarks:
        problems = world.load_split(bench)[: cfg.limit]
        prompt_ids = [engine.tokenizer(render("world", p.question))["input_ids"] for p in problems]
        outputs = engine.generate(prompt_ids, sampling, seeds=[prompt_seed(cfg.seed, p.id) for p in problems])
        correct = [[rewards.score(s.text, p.gold) for s in samples] for p, samples in zip(problems, outputs, strict=True)]
        results["benchmarks"][bench] = {
            "problems": len(problems),
            f"avg@{cfg.k}": avg_at_k(correct),
            "mean_response_tokens": sum(len(s.token_ids) for o in outputs for s in o) / max(1, sum(map(len, outputs))),
        }
    engine.close()
    results["wall_seconds"] = round(time.time() - start, 2)
    return results


def format_table(results_by_model: dict[str, dict], benchmarks: list[str], k: int) -> str:
    """A Markdown table: one row per model, avg@k per benchmark in percent."""
    header = "| model | " + " | ".join(f"{b} avg@{k}" for b in benchmarks) + " |"
    lines = [header, "|---|" + "---:|" * len(benchmarks)]
    for name, res in results_by_model.items():
        cells = [f"{100 * res['benchmarks'][b][f'avg@{k}']:.1f}" for b in benchmarks]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_results(path: str | Path) -> dict:
    return json.loads((Path(path) / "results.json").read_text())
