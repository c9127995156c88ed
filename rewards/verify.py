"""Math equivalence of an extracted answer and a gold answer, via math-verify.

math-verify (the field's library, used by TRL and open-r1) parses LaTeX into sympy through
its own grammar. Its traps, and what we do about them:
- ``verify(gold, pred)`` is asymmetric: gold goes first.
- Its ``ExprExtractionConfig`` runs sympy's ``parse_expr``, which calls ``eval``: we use only
  ``LatexExtractionConfig``, so model text is never evaluated as code.
- With default settings every box of a text is joined into one set: we hand it one box, the
  answer we extracted ourselves (``boxed="last"`` as a second guard).
- By default it accepts an interval answer for an inequality gold but not the reverse: we set
  ``allow_set_relation_comp`` so that ``-2 \\le x \\le 7`` also answers the gold ``[-2, 7]``.
- Its recommended reward settings differ from its defaults: a box only (no unanchored
  matches), boxes matched first, first match only.
- Its ``TimeoutException`` derives from ``BaseException`` and its timeouts use
  ``signal.alarm``, which works only in the main thread. Outside the main thread we hand
  the item to ``rewards.batch``, whose worker processes are killed on a hard deadline.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from importlib.metadata import version

from rewards.arithmetic import expressions_without_eval, hook_available
from rewards.extract import EXTRACTIONS, brace_bare_boxes, extract_answer, normalize_unicode
from rewards.normalize import normalize_answer

VERIFIER_VERSION = f"math-verify-{version('math-verify')}/unicode+exact-numbers+expressions/4"
# Longer "answers" are not answers (the longest gold of the six benchmarks is ~250 characters);
# refusing them keeps megabyte boxes away from the LaTeX parser.
MAX_ANSWER_CHARS = 1000
# math-verify's signal.alarm per stage (parse gold, parse answer, compare), whole seconds.
STAGE_TIMEOUT_SECONDS = 1

logging.getLogger("math_verify").setLevel(logging.ERROR)  # it logs every timed-out input in full at WARNING


@functools.cache
def _math_verify():
    """(parse, verify, extraction config, TimeoutException), imported on first use (sympy takes a second)."""
    from latex2sympy2_extended import NormalizationConfig
    from math_verify import LatexExtractionConfig, parse, verify
    from math_verify.errors import TimeoutException

    config = [LatexExtractionConfig(
        boxed_match_priority=0, try_extract_without_anchor=False,
        normalization_config=NormalizationConfig(basic_latex=True, units=True, malformed_operators=True, nits=True,
                                                 boxed="last"))]
    return parse, verify, config, TimeoutException


def _parse(answer: str, timeout: int | None):
    parse, _, config, _ = _math_verify()
    return parse(f"\\boxed{{{answer}}}", extraction_config=config, extraction_mode="first_match",
                 fallback_mode="no_fallback", parsing_timeout=timeout)


_GOLD_CACHE: dict[tuple[str, int | None], list] = {}
_GOLD_CACHE_SIZE = 4096


def _cached_gold(key: tuple, parse):
    """Golds repeat n times per prompt: each is parsed once. Only a successful parse is kept: math-verify
    returns [] on a timeout, and a gold that timed out once on a loaded machine must get another try."""
    if key in _GOLD_CACHE:
        return _GOLD_CACHE[key]
    parsed = parse()
    if parsed:
        if len(_GOLD_CACHE) >= _GOLD_CACHE_SIZE:
            _GOLD_CACHE.pop(next(iter(_GOLD_CACHE)))
        _GOLD_CACHE[key] = parsed
    return parsed


def _parse_gold(gold: str, timeout: int | None):
    return _cached_gold((gold, timeout), lambda: _parse(gold, timeout))


_DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_INTEGER_SUM = re.compile(r"[+-]?\d+(?:[+-]\d+)+")
_SPACED_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?: \d{3})+(?:\.\d+)?")


def exact_number(answer: str) -> tuple | None:
    """A canonical form of a plain decimal (``-12.50``, ``10 000``) or of a sum of integer literals
    (``1+2+...+100``), in linear time and without a parser; None for anything else. Huge or long
    answers that are equal settle here instead of timing out in the LaTeX parser."""
    if _SPACED_THOUSANDS.fullmatch(answer):
        answer = answer.replace(" ", "")
    answer = answer.replace(" ", "")
    if _DECIMAL.fullmatch(answer):  # compared as text: a 10^5-digit integer never becomes an int
        sign = "-" if answer.startswith("-") else ""
        whole, _, fraction = answer.lstrip("+-").partition(".")
        whole, fraction = whole.lstrip("0") or "0", fraction.rstrip("0")
        return ("" if whole == "0" and not fraction else sign, whole, fraction)
    if len(answer) <= 100_000 and _INTEGER_SUM.fullmatch(answer):
        try:
            total = sum(int(term) for term in re.findall(r"[+-]?\d+", answer))
        except ValueError:  # a term beyond Python's int-from-text limit
            return None
        return ("-" if total < 0 else "", str(abs(total)), "")
    return None


def in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def quick_verdict(pred: str, gold: str) -> bool | None:
    """The verdict when string work alone settles it (nothing to compare, too long, the same text), else None."""
    if not isinstance(pred, str) or not isinstance(gold, str):
        return False
    pred, gold = normalize_answer(pred), normalize_answer(gold)
    if not pred or not gold:
        return False
    if pred == gold:
        return True
    pred_value, gold_value = exact_number(pred), exact_number(gold)
    if pred_value is not None and gold_value is not None:
        return pred_value == gold_value
    if len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return False
    return None


def equivalent(pred: str, gold: str, *, timeout_seconds: int = STAGE_TIMEOUT_SECONDS) -> bool:
    """Whether the extracted answer ``pred`` equals ``gold`` mathematically; False on any failure.

    Bounded in time by math-verify's alarms (``timeout_seconds`` per stage), so in the main thread only:
    ``rewards.equivalent`` (``rewards.batch``) hands any other thread's call to a worker process instead.
    """
    verdict = quick_verdict(pred, gold)
    if verdict is not None:
        return verdict
    pred, gold = normalize_answer(pred), normalize_answer(gold)
    _, verify, _, TimeoutException = _math_verify()
    try:
        gold_parsed = _parse_gold(gold, timeout_seconds)
        pred_parsed = _parse(pred, timeout_seconds)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout_seconds, allow_set_relation_comp=True))
    except (Exception, TimeoutException):  # TimeoutException is a BaseException: name it
        return False


@functools.cache
def _defaults_config():
    """math-verify's own defaults: LaTeX extraction (anchored and unanchored, every box) and expression
    extraction, whose text goes to ``rewards.arithmetic`` instead of sympy's eval-based ``parse_expr``. A
    math-verify that does not route expressions through the replaceable hook gets LaTeX extraction only."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig

    return [LatexExtractionConfig(), ExprExtractionConfig()] if hook_available() else [LatexExtractionConfig()]


# math delimiters or a box: a gold text math-verify reads as it is; otherwise a bare answer
_DELIMITED = re.compile(r"\\\(|\\\[|\$|\\boxed|\\fbox")
# one plain number ("0,111", "12,000,023", "100%") or comma-free arithmetic ("2/3"): what its expression
# extraction reads; "1, 2" (a list) is not one of them
_PLAIN = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:[.,]\d+)?\s*%?|[\d.\s+\-*/^()]+")


def _parse_defaults(text: str, timeout: int | None):
    parse = _math_verify()[0]
    with expressions_without_eval():
        return parse(text, extraction_config=_defaults_config(), parsing_timeout=timeout)


def _parse_gold_text(gold: str, timeout: int | None):
    """A gold as math-verify's users parse it: a text with math delimiters, or a plain number or arithmetic
    (its decimal commas included), through the defaults; any other bare answer (``\\frac{1}{2}``, ``x^2``)
    as the content of one box."""
    if _DELIMITED.search(gold) or _PLAIN.fullmatch(gold):
        parsed = _cached_gold(("defaults", gold, timeout), lambda: _parse_defaults(gold, timeout))
        if parsed:
            return parsed
    return _parse_gold(normalize_answer(gold), timeout)


def verify_response(response: str, gold: str, *, timeout_seconds: int = STAGE_TIMEOUT_SECONDS) -> tuple[bool, str]:
    """The ``math-verify`` extraction mode: math-verify's default extraction over the whole response (and over
    a gold text with delimiters), with plain-text expressions read without eval. Returns (verdict, the answer
    text it found)."""
    _, verify, _, TimeoutException = _math_verify()
    if not isinstance(response, str) or not isinstance(gold, str):
        return False, ""
    response = brace_bare_boxes(normalize_unicode(response))
    gold = normalize_unicode(gold).strip()
    boxed = extract_answer(response, ())
    if boxed and quick_verdict(boxed, gold):  # exact and cheap numeric matches first, as in every mode
        return True, boxed
    if not gold or len(gold) > MAX_ANSWER_CHARS:
        return False, ""
    try:
        pred_parsed = _parse_defaults(response, timeout_seconds)
        pred = str(pred_parsed[-1]) if pred_parsed else ""
        gold_parsed = _parse_gold_text(gold, timeout_seconds)
        if not gold_parsed or not pred_parsed:
            return False, pred
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout_seconds,
                           allow_set_relation_comp=True)), pred
    except (Exception, TimeoutException):
        return False, ""


def extraction_fallbacks(extraction: str) -> tuple[str, ...]:
    if extraction not in EXTRACTIONS:
        raise ValueError(f"unknown extraction {extraction!r}; known: {', '.join(EXTRACTIONS)}")
    return EXTRACTIONS[extraction] or ()
