"""What one evaluation of a comparison costs, three ways: its own process (``bin/eval``, as bin/compare ran
stages before), a new engine in this process, and the live engine loading each checkpoint in place (as
bin/compare runs them now).

Evaluates ``--models`` checkpoints in turn (the shipped model and copies of it with perturbed weights, so that
each evaluation loads new weights) on the world's test splits with k samples, each way, one way after the other
in one run. Prints per evaluation: wall time, the engine's part (start or load), sampling, and the scoring left
left once sampling ended (the rest overlaps it); the ratios; and whether every way sampled the
same generations for the same checkpoint and seed.

    .venv/bin/python bench/eval.py [--models 3] [--problems 100] [--k 4]
"""

import argparse
import contextlib
import io
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def checkpoints(base: Path, count: int, where: Path) -> list[Path]:
    """The base model, then copies whose weights moved by a small seeded perturbation (same architecture)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    paths = [base]
    for i in range(1, count):
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        generator = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * p.abs().mean() * torch.randn(p.shape, generator=generator))
        model.save_pretrained(where / f"model-{i}")
        AutoTokenizer.from_pretrained(base).save_pretrained(where / f"model-{i}")
        paths.append(where / f"model-{i}")
    return paths


def eval_config(model: Path, out: Path, args, **more):
    from offline_rl.evaluate import EvalConfig

    return EvalConfig(model=str(model), seed=0, k=args.k, problems=args.problems, out=str(out), **more)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=3, help="checkpoints evaluated in turn")
    parser.add_argument("--problems", type=int, default=100, help="problems per world test split")
    parser.add_argument("--k", type=int, default=4)
    args = parser.parse_args()

    import pyarrow.parquet as pq

    from offline_rl import evaluate
    from offline_rl.embedded import context, world
    from offline_rl.embedded.base_model import DEFAULT_BASE_MODEL
    from rollout.engines import LiveEngine
    from rollout.models import resolve_model
    from rollout.runtime import command_line

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = checkpoints(DEFAULT_BASE_MODEL, args.models, tmp)
        ways: dict[str, list[dict]] = {"own process": [], "new engine": [], "live engine": []}
        for i, model in enumerate(models):
            start = time.time()
            # the command as a user runs it, in a process of its own (what this side measures)
            argv = shlex.split(command_line("eval", eval_config(model, tmp / f"proc-{i}", args)))[1:]
            subprocess.run([sys.executable, str(ROOT / "bin" / "eval"), *argv],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
            res = json.loads((tmp / f"proc-{i}" / "results.json").read_text())
            ways["own process"].append({**res, "wall": time.time() - start, "engine": None})
        for i, model in enumerate(models):
            start = time.time()
            with contextlib.redirect_stdout(io.StringIO()):  # its table
                res = evaluate.run_eval(eval_config(model, tmp / f"new-{i}", args))
            ways["new engine"].append({**res, "wall": time.time() - start, "engine": None})
        live = LiveEngine(evaluate.EvalConfig())
        for i, model in enumerate(models):
            start = time.time()
            ms = live.hold(resolve_model(str(model)))
            with contextlib.redirect_stdout(io.StringIO()):
                res = evaluate.run_eval(eval_config(model, tmp / f"live-{i}", args),
                                        context=context(engine=live.engine))
            ways["live engine"].append({**res, "wall": time.time() - start, "engine": ms / 1000 if ms else 0.0})
        ways["live, per benchmark"] = []  # as bin/eval sampled before: one engine pass per benchmark
        for i, model in enumerate(models):
            start, parts, ms = time.time(), [], live.hold(resolve_model(str(model)))
            for bench in world.TEST_SPLITS:
                one = eval_config(model, tmp / f"split-{i}" / bench, args, benchmarks=bench)
                with contextlib.redirect_stdout(io.StringIO()):
                    parts.append(evaluate.run_eval(one, context=context(engine=live.engine)))
            ways["live, per benchmark"].append({
                "wall": time.time() - start, "engine": ms / 1000 if ms else 0.0,
                **{key: sum(r[key] for r in parts) for key in ("generation_seconds", "scoring_seconds",
                                                                 "after_sampling_seconds")}})
            split = [r for bench in world.TEST_SPLITS
                     for r in pq.read_table(tmp / f"split-{i}" / bench / "generations.parquet").to_pylist()]
            whole = pq.read_table(tmp / f"live-{i}" / "generations.parquet").to_pylist()
            same_split = ([(r["benchmark"], r["response"]) for r in split]
                          == [(r["benchmark"], r["response"]) for r in whole])
        live.close()
        same = all((tmp / f"{way}-{i}" / "generations.parquet").read_bytes()
                   == (tmp / f"proc-{i}" / "generations.parquet").read_bytes()
                   for way in ("new", "live") for i in range(len(models)))

    print(f"{len(models)} checkpoints x 6 world test splits x {args.problems} problems x k={args.k}, vLLM on CPU "
          "(seconds per evaluation, mean over checkpoints; the live engine's first one includes its start)")
    print(f"{'':14}{'wall':>8}{'engine':>8}{'sampling':>10}{'scoring':>9}{'after sampling':>14}")
    mean = lambda rows, key: statistics.fmean(r[key] or 0 for r in rows)  # noqa: E731
    for way, rows in ways.items():
        print(f"{way:14}{mean(rows, 'wall'):>8.1f}{mean(rows, 'engine'):>8.1f}{mean(rows, 'generation_seconds'):>10.1f}"
              f"{mean(rows, 'scoring_seconds'):>9.1f}{mean(rows, 'after_sampling_seconds'):>14.1f}")
    after_first = lambda rows: statistics.fmean(r["wall"] for r in rows[1:])  # noqa: E731
    print(f"own process / live engine, per evaluation after the first: "
          f"{after_first(ways['own process']) / after_first(ways['live engine']):.2f}x; "
          f"new engine / live engine: {after_first(ways['new engine']) / after_first(ways['live engine']):.2f}x")
    print(f"same generations every way: {same}; one pass = per-benchmark passes: {same_split}")
    one, per = ways["live engine"], ways["live, per benchmark"]
    ratio = mean(per, "generation_seconds") / mean(one, "generation_seconds")
    print(f"per-benchmark passes / one pass, sampling: {ratio:.2f}x")


if __name__ == "__main__":
    main()
