"""``make demo``: the whole pipeline on the embedded default, each stage a command's function.

collect (vLLM samples from the shipped base model on the world's train prompts, verified) -> train DFT on the
accepted samples -> evaluate the base model and DFT on every world test split -> one table, avg@k per split.
One engine samples the collection and both evaluations, taking the trained weights in place.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from offline_rl import embedded
from offline_rl.evaluate import EvalConfig, avg_table, run_eval
from offline_rl.train import TrainConfig, run_train
from rollout.collect import CollectConfig, run_collect
from rollout.engines import LiveEngine
from rollout.files import hold_directory
from rollout.runtime import CommandContext, command_line, parse_config, print_config

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class DemoConfig:
    out: str = field(default=None, metadata={"help": "run directory (default: runs/demo-<time>)"})
    prompts: int = field(default=1000, metadata={"help": "world train prompts to collect from", "min": 1})
    n: int = field(default=4, metadata={"help": "responses per prompt", "min": 1})
    epochs: float = field(default=4.0, metadata={"help": "DFT passes over the accepted samples", "above": 0,
                                                 "max": 1000})
    k: int = field(default=4, metadata={"help": "samples per test problem (avg@k)", "min": 1})
    seed: int = field(default=0, metadata={"help": "seed of collection, training and evaluation"})


def main(argv: list[str] | None = None, *, context: CommandContext | None = None) -> dict:
    return run_demo(parse_config(DemoConfig, argv, "demo", __doc__), context=context)


def run_demo(cfg: DemoConfig, *, context: CommandContext | None = None) -> dict:
    """``make demo``. From the ``context`` (default: the embedded one): the world, and the base model it starts from."""
    context = context or embedded.context()
    out = Path(cfg.out or ROOT / "runs" / time.strftime("demo-%Y%m%d-%H%M%S"))
    hold_directory(out, "demo")
    print_config(cfg, out=out)
    base = context.default_model
    collect = CollectConfig(out=str(out / "data"), prompts=cfg.prompts, n=cfg.n, seed=cfg.seed)
    train = TrainConfig(learner="dft", data=str(out / "data"), out=str(out / "dft"), epochs=cfg.epochs, seed=cfg.seed)
    evals = {name: EvalConfig(model=model, name=name, k=cfg.k, out=str(out / f"eval-{name}"), seed=cfg.seed)
             for name, model in (("base", base), ("dft", str(out / "dft")))}
    live, seconds, results = LiveEngine(EvalConfig()), {}, {}
    try:
        seconds["collect"] = _stage("collect", collect, lambda: run_collect(
            collect, context=replace(context, engine=live.engine)), live, base)
        live.make_room()  # an accelerator's memory goes to the training
        seconds["train"] = _stage("train", train, lambda: run_train(train, context=context), None, None)
        for name, evaluation in evals.items():
            seconds[f"eval {name}"] = _stage(f"eval {name}", evaluation, lambda e=evaluation, n=name: results.update(
                {n: run_eval(e, context=replace(context, engine=live.engine))}), live, evaluation.model)
    finally:
        live.close()
    print(f"\nDFT on the base model's own accepted samples ({out}); pass@{cfg.k} and maj@{cfg.k} in "
          f"{out}/eval-*/results.json:\n")
    print(avg_table(results, list(results["base"]["benchmarks"]), cfg.k))
    print("\nstage seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items())
          + f", total {sum(seconds.values()):.0f}")
    return results


def _stage(name: str, config, call, live: LiveEngine | None, model: str | None) -> float:
    """One stage: its equivalent command line, the engine holding ``model`` when it samples, the call; its seconds."""
    command = name.split()[0]
    print(f"\n== {name}: {command_line(command, config)}", file=sys.stderr, flush=True)
    start = time.time()
    if live is not None:
        live.hold(model)
    call()
    return time.time() - start
