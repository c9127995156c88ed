"""On each real benchmark: a response boxing its own gold scores 1.0, one boxing another problem's gold scores 0.0.

The benchmarks live beside the repository (``../shared/data/benchmarks``, as in CI); they are read, never copied.
"""

import json
from pathlib import Path

import pytest

import rewards

BENCHMARKS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "benchmarks"
NAMES = ["gsm8k", "math500", "minerva_math", "olympiadbench", "aime24", "amc23"]
REQUIRED_RATE = 0.995

# Pairs where "another problem's gold" is the same answer written differently: scoring them 1.0 is right.
ACCEPTED_OTHER_GOLD_MATCHES = {
    ("5", "x=5"),  # math500: an equation's right-hand side is the value math-verify compares
}


def load_golds(name: str) -> list[str]:
    path = BENCHMARKS / f"{name}_test.jsonl"
    if not path.is_file():
        pytest.skip(f"benchmark data absent: {path}")
    return [rewards.gold_answer(json.loads(line), name) for line in path.open() if line.strip()]


def other_gold(golds: list[str], i: int) -> str:
    """The next problem's gold that is written differently from problem i's."""
    return next((golds[(i + k) % len(golds)] for k in range(1, len(golds)) if golds[(i + k) % len(golds)] != golds[i]),
                "")


@pytest.mark.slow
@pytest.mark.parametrize("extraction", list(rewards.EXTRACTIONS))
@pytest.mark.parametrize("name", NAMES)
def test_own_gold_scores_one_and_other_gold_zero(name, extraction):
    golds = load_golds(name)
    assert all(golds), f"{name}: a record without a gold answer"
    others = [other_gold(golds, i) for i in range(len(golds))]
    responses = [f"Putting it together, the final answer is $\\boxed{{{g}}}$." for g in golds]
    result = rewards.score_batch_detailed(responses + responses, golds + others, deadline=5.0, extraction=extraction)
    n = len(golds)
    own, other = result.rewards[:n], result.rewards[n:]
    own_rate = sum(own) / n
    other_rate = sum(1 for r in other if r == 0.0) / n
    own_failures = [golds[i] for i in range(n) if own[i] != 1.0]
    other_failures = [(golds[i], others[i]) for i in range(n) if other[i] != 0.0]
    print(f"\n{name} ({extraction}): {n} problems, own gold scores 1.0: {own_rate:.2%}, other gold scores 0.0: {other_rate:.2%}, "
          f"timed out: {len(result.timed_out)}; failures: own {own_failures}, other {other_failures}")
    assert own_rate >= REQUIRED_RATE, own_failures
    assert other_rate >= REQUIRED_RATE, other_failures
    assert set(other_failures) <= ACCEPTED_OTHER_GOLD_MATCHES, other_failures
