"""Single-process math-verify vs ``rewards.score_batch``, side by side on the same responses.

Prints responses/s and p50/p99 latency on clean responses, and the wall time of a batch of
1,000 responses of which 5 % are pathological (exponent towers, deeply nested braces), then
the ratios. Responses are built from the real benchmarks in ``../shared/data/benchmarks``:
half box their own problem's gold, half another problem's.

The single-process baseline is math-verify as the field calls it for rewards (its recommended
settings, LaTeX extraction only, its own 5 s ``signal.alarm`` timeouts), one response after another.
Every method starts with empty sympy caches and a fresh worker pool (started outside the clock).

    python bench/verifier.py [--clean 2000] [--batch 1000] [--pathological 0.05] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rewards  # noqa: E402
from rewards.batch import close_pool  # noqa: E402

BENCHMARKS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "benchmarks"
PATHOLOGICAL = [
    "\\boxed{9^{9^{9^{9^9}}}}",
    "\\boxed{" + "{" * 200 + "1" + "}" * 200 + "}",
    "\\boxed{2^{2^{2^{2^{2^{2^{2}}}}}}}",
    "\\boxed{" + "(1+" * 300 + "1" + ")" * 300 + "}",
]
REASONING = ("Let us work through the problem step by step. First we set up the quantities involved, "
             "then we simplify the expression, check the edge cases and combine the partial results. ")


def load_pairs(seed: int) -> list[tuple[str, str]]:
    """(response, gold) pairs from the benchmarks: half correct, half boxing another problem's gold."""
    rng = random.Random(seed)
    pairs = []
    for path in sorted(BENCHMARKS.glob("*_test.jsonl")):
        golds = [rewards.gold_answer(json.loads(line), path.name) for line in path.open() if line.strip()]
        for i, gold in enumerate(golds):
            answer = gold if i % 2 == 0 else golds[(i + 1) % len(golds)]
            pairs.append((f"{REASONING * 3}So the final answer is $\\boxed{{{answer}}}$.", gold))
    rng.shuffle(pairs)
    return pairs


def math_verify_single_process(pairs: list[tuple[str, str]]) -> tuple[list[float], list[float]]:
    """(rewards, per-item seconds) of plain math-verify in this process."""
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import LatexExtractionConfig, parse, verify
    from math_verify.errors import TimeoutException

    config = [LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=False,
                                    normalization_config=NormalizationConfig(
                                        basic_latex=True, units=True, malformed_operators=False, nits=False,
                                        boxed="all"))]
    scores, seconds = [], []
    for response, gold in pairs:
        start = time.perf_counter()
        try:
            gold_parsed = parse(f"\\boxed{{{gold}}}", extraction_config=config)
            pred_parsed = parse(response, extraction_config=config, extraction_mode="first_match")
            correct = bool(gold_parsed and pred_parsed and verify(gold_parsed, pred_parsed))
        except (Exception, TimeoutException):
            correct = False
        scores.append(1.0 if correct else 0.0)
        seconds.append(time.perf_counter() - start)
    return scores, seconds


def cold_start(workers: int) -> None:
    """Empty sympy's and our caches and restart the pool, so that no method inherits another's warm caches."""
    from sympy.core.cache import clear_cache

    from rewards.verify import _GOLD_CACHE

    clear_cache()
    _GOLD_CACHE.clear()
    close_pool()
    rewards.score_batch(["\\boxed{1}", "\\boxed{2}"], ["1.0", "2.0"], workers=workers)  # start, outside the clock


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def report(name: str, n: int, wall: float, seconds: list[float]) -> None:
    print(f"  {name:<34} {n / wall:9.0f} responses/s   p50 {1000 * percentile(seconds, 50):7.2f} ms   "
          f"p99 {1000 * percentile(seconds, 99):8.2f} ms   wall {wall:7.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clean", type=int, default=2000, help="clean responses for throughput and latency")
    parser.add_argument("--batch", type=int, default=1000, help="size of the batch with pathological responses")
    parser.add_argument("--pathological", type=float, default=0.05, help="fraction of that batch that is pathological")
    parser.add_argument("--workers", type=int, default=None, help="score_batch processes (default: one per CPU)")
    parser.add_argument("--deadline", type=float, default=2.0, help="score_batch per-item deadline, seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--collect-only", action="store_true",
                        help="only the pathological batch as bin/collect scores it: "
                             "before (serial, main thread) and now")
    args = parser.parse_args()
    if not BENCHMARKS.is_dir():
        sys.exit(f"bench/verifier.py: benchmark data absent: {BENCHMARKS}")
    workers = args.workers or os.cpu_count()
    pairs = load_pairs(args.seed)
    clean = (pairs * (args.clean // len(pairs) + 1))[: args.clean]
    print(f"math-verify {rewards.VERIFIER_VERSION}; {os.cpu_count()} CPUs; score_batch with {workers} workers, "
          f"deadline {args.deadline} s")

    math_verify_single_process(clean[:20])  # imports and parser warm-up, for both sides
    start = time.perf_counter()
    rewards.score_batch([r for r, _ in clean[:20]], [g for _, g in clean[:20]], workers=workers)
    print(f"  (worker pool start: {time.perf_counter() - start:.2f} s, once per process, not counted below)")

    if args.collect_only:
        return collect_before_and_now(clean, args, workers)

    print(f"\nclean: {len(clean)} responses")
    cold_start(workers)
    start = time.perf_counter()
    baseline_scores, baseline_seconds = math_verify_single_process(clean)
    baseline_wall = time.perf_counter() - start
    report("single-process math-verify", len(clean), baseline_wall, baseline_seconds)
    cold_start(workers)
    start = time.perf_counter()
    sequential_seconds = []
    for response, gold in clean:
        item = time.perf_counter()
        rewards.score(response, gold)
        sequential_seconds.append(time.perf_counter() - item)
    sequential_wall = time.perf_counter() - start
    report("rewards.score, one process", len(clean), sequential_wall, sequential_seconds)
    cold_start(workers)
    start = time.perf_counter()
    result = rewards.score_batch_detailed([r for r, _ in clean], [g for _, g in clean], workers=workers,
                                          deadline=args.deadline)
    batch_wall = time.perf_counter() - start
    report(f"rewards.score_batch ({workers} workers)", len(clean), batch_wall, result.seconds)
    agree = sum(a == b for a, b in zip(baseline_scores, result.rewards, strict=True)) / len(clean)
    print(f"  agreement with single-process math-verify: {agree:.2%}; pass rate {sum(result.rewards) / len(clean):.2%}")

    n_bad = round(args.batch * args.pathological)
    rng = random.Random(args.seed + 1)
    mixed = clean[: args.batch - n_bad] + [(PATHOLOGICAL[i % len(PATHOLOGICAL)], "5") for i in range(n_bad)]
    rng.shuffle(mixed)
    print(f"\nbatch of {len(mixed)} responses, {n_bad} pathological ({args.pathological:.0%})")
    cold_start(workers)
    start = time.perf_counter()
    _, mixed_baseline_seconds = math_verify_single_process(mixed)
    mixed_baseline_wall = time.perf_counter() - start
    report("single-process math-verify", len(mixed), mixed_baseline_wall, mixed_baseline_seconds)
    cold_start(workers)
    start = time.perf_counter()
    mixed_result = rewards.score_batch_detailed([r for r, _ in mixed], [g for _, g in mixed], workers=workers,
                                                deadline=args.deadline)
    mixed_batch_wall = time.perf_counter() - start
    report(f"rewards.score_batch ({workers} workers)", len(mixed), mixed_batch_wall, mixed_result.seconds)
    print(f"  score_batch: {len(mixed_result.timed_out)} timed out (killed), "
          f"max item {max(mixed_result.seconds):.2f} s")

    print("\nratios (score_batch vs single-process math-verify)")
    print(f"  clean throughput:             {baseline_wall / batch_wall:5.2f}x   (target >= 1.7x)")
    print(f"  clean throughput vs rewards.score in one process: {sequential_wall / batch_wall:5.2f}x")
    print(f"  5%-pathological batch wall:   {mixed_baseline_wall / mixed_batch_wall:5.2f}x   (target >= 3x)")
    close_pool()


def pathological_batch(clean: list[tuple[str, str]], args) -> list[tuple[str, str]]:
    n_bad = round(args.batch * args.pathological)
    mixed = clean[: args.batch - n_bad] + [(PATHOLOGICAL[i % len(PATHOLOGICAL)], "5") for i in range(n_bad)]
    random.Random(args.seed + 1).shuffle(mixed)
    return mixed


def collect_before_and_now(clean: list[tuple[str, str]], args, workers: int) -> None:
    """bin/collect's scoring of one shard: before, ``rewards.score`` per response in its main thread
    (math-verify's own 1 s alarms per stage); now, ``score_batch_detailed`` in the worker pool."""
    mixed = pathological_batch(clean, args)
    print(f"\ncollect's scoring of a batch of {len(mixed)} responses, {args.pathological:.0%} pathological")
    cold_start(workers)
    start = time.perf_counter()
    before = [rewards.score(response, gold) for response, gold in mixed]
    before_wall = time.perf_counter() - start
    cold_start(workers)
    start = time.perf_counter()
    now = rewards.score_batch_detailed([r for r, _ in mixed], [g for _, g in mixed], workers=workers,
                                       deadline=args.deadline)
    now_wall = time.perf_counter() - start
    same = sum(a == b for a, b in zip(before, now.rewards, strict=True)) / len(mixed)
    print(f"  before (serial, main thread): {before_wall:7.2f} s\n  now (score_batch, {workers} workers): "
          f"{now_wall:7.2f} s, {len(now.timed_out)} timed out\n  before / now: {before_wall / now_wall:5.2f}x; "
          f"same verdicts on {same:.1%}")
    close_pool()


if __name__ == "__main__":
    main()
