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
- Its numbers are equal under an absolute tolerance (floats rounded to 6 places, other values
  ``evalf(chop=True)``), so every two tiny numbers are equal (``1/2004!`` and ``1/2006!``): within our
  calls its numeric comparison also asks for a relative one.
- It reads ``2 5`` as 2 + 5 (and we once read it as 25), a gold ``10-15`` as -5, and it drops units
  (``12 \\text{ m}`` equals ``12 \\text{ cm}``): how an answer is written settles these first
  (``written_verdict``), in every extraction mode.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import re
import threading
from importlib.metadata import version

from rewards.arithmetic import expressions_without_eval, hook_available
from rewards.extract import (
    EXTRACTIONS,
    brace_bare_boxes,
    extract_answer,
    extract_boxed,
    last_box_is_open,
    normalize_unicode,
)
from rewards.normalize import dash_list, has_spaced_digits, join_digit_groups, normalize_answer, split_unit

VERIFIER_VERSION = f"math-verify-{version('math-verify')}/unicode+exact-numbers+expressions+written-forms/5"
# Longer "answers" are not answers (the longest gold of the six benchmarks is ~250 characters);
# refusing them keeps megabyte boxes away from the LaTeX parser.
MAX_ANSWER_CHARS = 1000
# math-verify's signal.alarm per stage (parse gold, parse answer, compare), whole seconds.
STAGE_TIMEOUT_SECONDS = 1
# Numbers that math-verify finds equal must also be this close, relative to the larger: a decimal answer (a float)
# to the value it approximates (0.333333 for 1/3 is 1e-6 off), and two exact values evaluated to 15 digits.
FLOAT_RELATIVE_TOLERANCE = 1e-5
EXACT_RELATIVE_TOLERANCE = 1e-10

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


def exact_number(answer: str) -> tuple | None:
    """A canonical form of a plain decimal (``-12.50``, ``10 000``) or of a sum of integer literals
    (``1+2+...+100``), in linear time and without a parser; None for anything else (``2 5`` included). Huge or
    long answers that are equal settle here instead of timing out in the LaTeX parser."""
    answer = join_digit_groups(answer)
    if has_spaced_digits(answer):
        return None
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


def written_verdict(pred: str, gold: str) -> bool | None:
    """What the way two normalised answers are written settles, before any parser reads them; else None.
    - Digits separated by spaces (``2 5``, ``1.5 6``) are no number: never right (spaced thousands were joined).
    - A known unit on both sides must be the same unit (``12 \\text{ m}`` is not ``12 \\text{ cm}``); a unit
      on one side only is compared by its value, as before.
    - A gold range or dash-separated list (``10-15``) is matched by the same numbers in the same order, written
      as a range (``10-15``, ``10 to 15``), never by the difference (-5)."""
    if has_spaced_digits(pred):
        return False
    (pred_value, pred_unit), (gold_value, gold_unit) = split_unit(pred), split_unit(gold)
    if pred_unit and gold_unit and pred_unit != gold_unit:
        return False
    numbers = dash_list(gold_value)
    if numbers is not None:
        return dash_list(pred_value) == numbers
    return None


def quick_verdict(pred: str, gold: str) -> bool | None:
    """The verdict when string work alone settles it (nothing to compare, too long, the same text, how they are
    written, plain numbers), else None."""
    if not isinstance(pred, str) or not isinstance(gold, str):
        return False
    pred, gold = normalize_answer(pred), normalize_answer(gold)
    if not pred or not gold:
        return False
    if pred == gold:
        return True
    verdict = written_verdict(pred, gold)
    if verdict is not None:
        return verdict
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
        with _relative_numbers():
            return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout_seconds,
                               allow_set_relation_comp=True))
    except (Exception, TimeoutException):  # TimeoutException is a BaseException: name it
        return False


def _relatively_close(a, b, tolerance: float, digits: int) -> bool:
    """|a - b| <= tolerance * max(|a|, |b|), evaluated to ``digits`` digits; True where that cannot be judged
    (symbols, values without a size), leaving the verdict to the comparison that called it."""
    import sympy

    try:
        a, b = sympy.N(a, digits), sympy.N(b, digits)
        if not (a.is_number and b.is_number):
            return True
        scale = max(abs(a), abs(b))
        return bool(scale == 0 or abs(a - b) <= tolerance * scale)
    except Exception:
        return True


def _relative_numeric_eq(original):
    """math-verify's numeric comparison, whose "equal" must also hold under a relative tolerance where it used an
    absolute one: floats it rounds to ``float_rounding`` places (1e-7 equals 2e-7), other values it evaluates with
    ``chop=True`` (1/2004! equals 1/2006!). Its exact comparisons (integers, rationals) stand as they are."""
    from sympy import Float, MatrixBase, Number

    try:
        from math_verify.grader import is_atomic_or_pct_atomic, safe_sympy_doit
    except ImportError:  # another math-verify: its own comparison, rather than none
        return original

    def numeric_eq(a, b, float_rounding, numeric_precision):
        if not original(a, b, float_rounding, numeric_precision):
            return False
        if isinstance(a, MatrixBase) or isinstance(b, MatrixBase):
            return True  # compared element by element, each through this function
        floats = a.has(Float) or b.has(Float)
        if not floats and (is_atomic_or_pct_atomic(a, Number) or is_atomic_or_pct_atomic(b, Number)):
            return True  # compared exactly
        tolerance = FLOAT_RELATIVE_TOLERANCE if floats else EXACT_RELATIVE_TOLERANCE
        return _relatively_close(safe_sympy_doit(a), safe_sympy_doit(b), tolerance, numeric_precision)

    return numeric_eq


_NUMERIC_HOOK = ("math_verify.grader", "sympy_numeric_eq")  # what sympy_expr_eq calls for numbers, by global name
_MATCH_HOOK = ("math_verify.parser", "extract_match")  # what parse calls on each candidate answer, by global name


@contextlib.contextmanager
def _hooked(hook: tuple[str, str], make):
    """Within the block, ``hook``'s function is ``make(original)``; a math-verify without it is left as it is."""
    module = importlib.import_module(hook[0])
    original = getattr(module, hook[1], None)
    if not callable(original):
        yield
        return
    setattr(module, hook[1], make(original))
    try:
        yield
    finally:
        setattr(module, hook[1], original)


def _relative_numbers():
    return _hooked(_NUMERIC_HOOK, _relative_numeric_eq)


def _recording_answers(found: list):
    """Within the block, each match math-verify's ``parse`` reads an answer from is appended to ``found``."""
    def make(original):
        def extract_match(match, target_type):
            extracted = original(match, target_type)
            if extracted[0] is not None:
                found.append(match)
            return extracted
        return extract_match
    return _hooked(_MATCH_HOOK, make)


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


def _parse_defaults(text: str, timeout: int | None, found: list | None = None):
    """math-verify's default extraction of ``text``; with ``found``, the regex matches it read answers from."""
    parse = _math_verify()[0]
    with expressions_without_eval(), _recording_answers([] if found is None else found):
        return parse(text, extraction_config=_defaults_config(), parsing_timeout=timeout)


def _answer_text(match: re.Match) -> tuple[str, str]:
    """(the answer's text as written, the text right after it) of a match math-verify read its answer from. A box
    is read for its last box's content, with nothing after it; a plain-text number takes the digits that follow it
    after spacing ("2 5": its regex reads the 2)."""
    groups = {name: value for name, value in match.groupdict().items() if value}
    latex = [value for name, value in groups.items() if "_latex" in name]
    after = match.string[match.end() : match.end() + 80]
    if latex:
        text = ", ".join(latex)
        return (extract_boxed(text), "") if "\\boxed" in text or "\\fbox" in text else (text, after)
    names = [name for name in groups if name == "expr" or name.startswith(("integer", "decimal"))]
    if not names:
        return "", ""
    start, end = min(match.start(n) for n in names), max(match.end(n) for n in names)
    continued = re.match(r"(?:[ \t]+\d+(?:\.\d+)?)*", match.string[end : end + 80]).group()
    return match.string[start:end] + continued, match.string[end + len(continued) : end + len(continued) + 80]


_LEADING_UNIT = re.compile(r"(?:\s|\\[,;: ]|~)*((?:\\(?:text|mbox|mathrm)\s*\{[^{}]*\}|[A-Za-z]+)"
                           r"(?:(?:\s+per\s+|\s*/\s*)[A-Za-z]+)?(?:\s*\^\s*\{?\s*\d\s*\}?)?)")


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
    text it found). As in the other modes, an unclosed last box is no answer (an earlier box does not stand for
    it), and the answer's text as written (its spacing, unit, a gold range) is judged before its value."""
    _, verify, _, TimeoutException = _math_verify()
    if not isinstance(response, str) or not isinstance(gold, str):
        return False, ""
    response = join_digit_groups(brace_bare_boxes(normalize_unicode(response)))
    gold = join_digit_groups(normalize_unicode(gold).strip())
    if last_box_is_open(response):
        return False, ""
    boxed = extract_answer(response, ())
    if boxed and quick_verdict(boxed, gold):  # exact and cheap numeric matches first, as in every mode
        return True, boxed
    if not gold or len(gold) > MAX_ANSWER_CHARS:
        return False, ""
    try:
        found: list[re.Match] = []
        pred_parsed = _parse_defaults(response, timeout_seconds, found)
        pred = str(pred_parsed[-1]) if pred_parsed else ""
        if not pred_parsed:
            return False, pred
        answer, after = _answer_text(found[0]) if found else (boxed, "")
        unit = _LEADING_UNIT.match(after) if answer and after else None
        if unit and unit.group(1).lower() != "in":  # "12 in total": a word, not inches
            answer = f"{answer} {unit.group(1)}"
        verdict = written_verdict(normalize_answer(answer), normalize_answer(extract_boxed(gold) or gold))
        if verdict is not None:
            return verdict, pred
        gold_parsed = _parse_gold_text(gold, timeout_seconds)
        if not gold_parsed:
            return False, pred
        with _relative_numbers():
            return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout_seconds,
                               allow_set_relation_comp=True)), pred
    except (Exception, TimeoutException):
        return False, ""


def extraction_fallbacks(extraction: str) -> tuple[str, ...]:
    if extraction not in EXTRACTIONS:
        raise ValueError(f"unknown extraction {extraction!r}; known: {', '.join(EXTRACTIONS)}")
    return EXTRACTIONS[extraction] or ()
