"""Math equivalence of an extracted answer and a gold answer, via math-verify.

math-verify (the field's library, used by TRL and open-r1) parses both sides
into sympy through its own LaTeX grammar, never ``eval``. Its ``verify`` is
asymmetric: the gold goes first. Its timeouts use ``signal.alarm``, which only
works in the main thread, so elsewhere we call it without them.
"""

from __future__ import annotations

import threading

from rewards.extract import extract_boxed

VERIFIER_VERSION = "math-verify-boxed/1"
TIMEOUT_SECONDS = 3


def extract_answer(response: str) -> str:
    """The final answer a response commits to ("" if it commits to none)."""
    return extract_boxed(response)


def equivalent(pred: str, gold: str) -> bool:
    """Whether ``pred`` equals ``gold`` mathematically; False on any failure."""
    if not pred or not gold:
        return False
    if pred.strip() == gold.strip():
        return True
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException  # derives from BaseException, not Exception

    timeout = TIMEOUT_SECONDS if threading.current_thread() is threading.main_thread() else None
    try:
        gold_parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=timeout)
        pred_parsed = parse(f"\\boxed{{{pred}}}", parsing_timeout=timeout)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    except (Exception, TimeoutException):
        return False


def score(response: str, gold: str) -> float:
    """1.0 if the response's final boxed answer equals ``gold`` mathematically, else 0.0."""
    return 1.0 if equivalent(extract_answer(response), gold) else 0.0
