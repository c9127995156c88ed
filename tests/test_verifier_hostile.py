"""Hostile model outputs: nothing executes, no item outlives its deadline by more than 0.5 s, the process survives."""

import os
import time

import pytest

import rewards

DEADLINE = 1.0
SLACK = 0.5


def hostile_cases(sentinel: str) -> list[tuple[str, str, float]]:
    """(response, gold, expected) rows; ``sentinel`` is a file that any executed payload would create."""
    touch = f"open({sentinel!r}, 'w').write('pwned')"
    return [
        # code injection: sympy's parse_expr would eval these
        (f"\\boxed{{__import__('os').system('touch {sentinel}')}}", "0", 0.0),
        (f"\\boxed{{exec(\"{touch}\")}}", "0", 0.0),
        (f"\\boxed{{eval(\"{touch}\")}}", "0", 0.0),
        (f"\\boxed{{(lambda: {touch})()}}", "0", 0.0),
        (f"The answer is __import__('builtins').exec(\"{touch}\").", "0", 0.0),
        (f"The answer is (lambda: {touch})()", "0", 0.0),
        (f"$__import__('os').system('touch {sentinel}')$ \\boxed{{{touch}}}", "5", 0.0),
        (f"\\boxed{{Symbol('x').__class__.__mro__[-1].__subclasses__() and {touch}}}", "0", 0.0),
        # towers of exponents and huge powers
        ("\\boxed{9^{9^{9^{9^9}}}}", "5", 0.0),
        ("\\boxed{10^{10^{10^{10}}}}", "5", 0.0),
        ("\\boxed{2^{2^{2^{2^{2^{2^{2}}}}}}}", "5", 0.0),
        ("\\boxed{99999999^{99999999}}", "5", 0.0),
        ("\\boxed{" + "9^{" * 200 + "9" + "}" * 200 + "}", "5", 0.0),
        ("\\boxed{(10^{10^{10}})!}", "5", 0.0),
        # 10^5-character responses
        ("\\boxed{" + "1" * 100_000 + "}", "1", 0.0),
        ("a " * 50_000, "1", 0.0),
        ("\\boxed{" + "x+" * 50_000 + "1}", "1", 0.0),
        ("The answer is " + "9" * 100_000, "9", 0.0),
        ("\\frac{" * 20_000, "1", 0.0),
        # thousands of nested or unbalanced braces
        ("\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}", "1", 0.0),
        ("\\boxed{" * 5000, "1", 0.0),
        ("}" * 5000 + "\\boxed{1}", "1", 1.0),
        ("\\boxed{" + "{" * 5000, "1", 0.0),
        ("\\boxed{" + "\\left(" * 2000 + "1" + "\\right)" * 2000 + "}", "1", 0.0),
        ("\\boxed{" + "\\sqrt{" * 3000 + "2" + "}" * 3000 + "}", "2", 0.0),
        # how an answer is written, read in linear time: 50,000 spaced digits, an abandoned box before 20,000 open ones
        ("\\boxed{" + "1 " * 50_000 + "}", "1", 0.0),
        ("\\boxed{1}" + "\\boxed{" * 20_000, "1", 0.0),
        ("\\boxed{1" + " \\text{ m}" * 5000 + "}", "1 \\text{ cm}", 0.0),
        # empty boxes, several boxes
        ("\\boxed{}", "1", 0.0),
        ("\\boxed{}\\boxed{}\\boxed{ }", "1", 0.0),
        ("\\boxed{1}\\boxed{2}\\boxed{3}" * 2000, "3", 1.0),
        ("\\boxed{3} \\boxed{4}", "3, 4", 0.0),
        # unicode look-alikes: full-width and mathematical digits, Cyrillic letters, a lone surrogate, zero-width space
        ("\\boxed{１９}", "18", 0.0),
        ("\\boxed{𝟏𝟗}", "18", 0.0),
        ("\\boxed{\u0445 + 1}", "x + 1", 1.0),  # a Cyrillic look-alike reads as the Latin letter
        ("\\boxed{1\u200b9}", "18", 0.0),
        ("\\boxed{\ud800}", "1", 0.0),
        ("\\boxed{\u2212 5}", "5", 0.0),
        ("\\boxed{\\text{" + "\u202e" * 1000 + "}}", "1", 0.0),
        # ordinary items among them still score
        ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),
        ("So the answer is 42.", "42", 1.0),
    ]


@pytest.mark.slow
def test_hostile_inputs_are_bounded_and_never_executed(tmp_path):
    sentinel = str(tmp_path / "SENTINEL")
    cases = hostile_cases(sentinel)
    responses, golds, expected = (list(column) for column in zip(*cases, strict=True))
    start = time.monotonic()
    result = rewards.score_batch_detailed(responses, golds, workers=2, deadline=DEADLINE)
    wall = time.monotonic() - start
    slowest = max(range(len(cases)), key=lambda i: result.seconds[i])
    print(f"\nhostile: {len(cases)} items in {wall:.2f} s, max item {result.seconds[slowest]:.3f} s "
          f"({responses[slowest][:40]!r}), timed out {len(result.timed_out)}, crashed {len(result.crashed)}")
    assert not os.path.exists(sentinel), "model text was executed"
    assert max(result.seconds) <= DEADLINE + SLACK
    wrong = [(responses[i][:60], golds[i], result.rewards[i]) for i in range(len(cases))
             if result.rewards[i] != expected[i]]
    assert not wrong
    # the process survives and the pool still scores
    assert rewards.score_batch(["\\boxed{2}", "\\boxed{3}"], ["2", "2"], workers=2) == [1.0, 0.0]


def test_stuck_worker_is_killed_and_replaced():
    """A tower outlives a 0.3 s deadline (math-verify's own alarm is 1 s): killed, counted, and the pool goes on."""
    responses = ["\\boxed{9^{9^{9^{9^9}}}}", "\\boxed{2}", "\\boxed{10^{10^{10^{10}}}}", "\\boxed{3}"]
    start = time.monotonic()
    result = rewards.score_batch_detailed(responses, ["5", "2", "5", "3"], workers=2, deadline=0.3)
    assert result.rewards == [0.0, 1.0, 0.0, 1.0]
    assert sorted(result.timed_out) == [0, 2]
    assert max(result.seconds) <= 0.3 + SLACK
    assert time.monotonic() - start < 5


def test_score_in_the_main_thread_is_bounded(tmp_path):
    """score() without workers: math-verify's alarms bound each stage to a second."""
    sentinel = str(tmp_path / "SENTINEL")
    for response, gold in [("\\boxed{9^{9^{9^{9^9}}}}", "5"), (f"\\boxed{{exec(\"open({sentinel!r}, 'w')\")}}", "0"),
                           ("\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}", "1")]:
        start = time.monotonic()
        assert rewards.score(response, gold) == 0.0
        assert time.monotonic() - start <= 3 * rewards.verify.STAGE_TIMEOUT_SECONDS + SLACK
    assert not os.path.exists(sentinel)


def test_stream_scorer_gives_the_batch_verdicts_however_items_arrive():
    """Items added one prompt at a time (as samples finish) and scored in chunks of 3: the verdicts and time-outs
    of one batch call over the same items; an error in the scoring thread reaches the caller."""
    responses = ["\\boxed{2}", "\\boxed{9^{9^{9^{9^9}}}}", "\\boxed{\\frac{1}{2}}", "no answer", "\\boxed{3}",
                 "\\boxed{0.50}", "\\boxed{x}"]
    golds = ["2", "5", "0.5", "1", "4", "1/2", "x"]
    whole = rewards.score_batch_detailed(responses, golds, workers=2, deadline=0.3)
    scorer = rewards.StreamScorer(deadline=0.3, chunk=3)
    for i in range(0, len(responses), 2):
        scorer.add([(f"r{j}", responses[j], golds[j]) for j in range(i, min(i + 2, len(responses)))])
    scored, timed_out, seconds = scorer.finish()
    assert [scored[f"r{j}"] for j in range(len(responses))] == list(zip(whole.preds, whole.rewards, strict=True))
    assert whole.rewards == [1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0] and timed_out == ["r1"] and seconds > 0

    broken = rewards.StreamScorer()
    broken.add([("a", None)])  # not a (key, response, gold) item
    with pytest.raises(ValueError):
        broken.finish()
