"""Gold answers per benchmark source, and the normalisation applied to both sides before comparing.

Each benchmark stores its gold differently; ``gold_answer(record, source)`` turns a record into
the one answer string a response's final answer is compared with.
"""

from __future__ import annotations

import re

from rewards.extract import clean_answer, extract_boxed, normalize_unicode

# Spacing between two digits: a space or tab (NFKC has made thin and no-break spaces plain ones), LaTeX's
# \, \; \: \! and "\ ", a tie, a quad. One token each, so that a run of them is matched one way only (linear time).
_SPACE_GAP = r"(?:[ \t]|\\[,;:! ]|~|\\q?quad(?![A-Za-z]))"
_ANY_GAP = r"(?:\s|\\[,;:! ]|~|\\q?quad(?![A-Za-z]))"
# 1 000 000, 1\,000, 1{,}000: a whole first group of one to three digits, then groups of exactly three.
_THOUSANDS = re.compile(rf"(?<![\w.])\d{{1,3}}(?:(?:{_SPACE_GAP}+|\{{,\}})\d{{3}})+(?!\d)")
# digits, spacing, digits again ("2 5", "1.5 6", "12 3456"): what is left once thousands are joined
_SPACED_DIGITS = re.compile(rf"(?<![\w.])\d+(?:\.\d+)?{_ANY_GAP}+(?=\d)")
# TeX gives \frac, \binom, \sqrt and a sub/superscript the next digit as argument: \frac 1 2 is 1/2, x^2 3 is 3x^2
_TOKEN_ARGUMENT = re.compile(r"(?:[\^_]|\\(?:[dtc]?frac|[dt]?binom|sqrt))\s*$")
_PLAIN_GROUPED = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def _takes_argument(text: str, start: int) -> bool:
    """Whether the digits at ``start`` are a TeX argument (a window before them is enough: linear time overall)."""
    return bool(_TOKEN_ARGUMENT.search(text[max(0, start - 40) : start]))


def join_digit_groups(text: str) -> str:
    """Spaced thousands as one number: ``1 000 000``, ``1\\,000``, ``1{,}000`` -> ``1000000``, ``1000``, ``1000``.
    Digits spaced any other way (``2 5``) stay as they are: :func:`has_spaced_digits` finds them."""
    return _THOUSANDS.sub(lambda m: m.group() if _takes_argument(text, m.start()) else re.sub(r"\D", "", m.group()),
                          text)


def has_spaced_digits(text: str) -> bool:
    """Whether digits are separated by spacing that is no thousands grouping (``2 5``, ``1.5 6``, ``2\\,5``): no
    number a reader would write, though parsers join them (25) or add them (2 + 5). ``\\frac 1 2`` is no such case."""
    text = join_digit_groups(text)
    return any(not _takes_argument(text, m.start()) for m in _SPACED_DIGITS.finditer(text))


def normalize_answer(answer: str) -> str:
    """Normalise an extracted or gold answer without changing its value.

    Thousands separators go: ``10{,}000``, ``10\\,000`` and ``10 000`` anywhere (LaTeX spacing, never a list),
    ``1,234,567`` only when it is the whole answer (``1,234`` inside a tuple may be two numbers).
    Units, degrees and percent are left to math-verify's own normalisation, which both sides share.
    """
    answer = clean_answer(normalize_unicode(answer))
    answer = re.sub(r"^\\\$\s*|^\$\s*(?=\d)", "", answer)  # "\$18" and "$18": currency, not math mode
    answer = join_digit_groups(answer)
    if _PLAIN_GROUPED.fullmatch(answer):
        answer = answer.replace(",", "")
    answer = re.sub(r"(?<=\d)\./(?=\d)", "/", answer)  # "-1./3": a C-style float literal in some golds
    return answer.strip()


# A gold written as a range or a dash-separated list ("10-15", "3-2", "2023-10-15", "10 to 15"): unsigned numbers
# joined by dashes. Read as what it is, never as a subtraction (which would accept -5 for 10-15).
_NUMBER = r"\d+(?:\.\d+)?"
_RANGE_DASH = r"\s*(?:-{1,3}|\u2014|\\text\{\s*(?:-{1,3}|to)\s*\}|to|\\sim)\s*"
_DASH_LIST = re.compile(rf"{_NUMBER}(?:{_RANGE_DASH}{_NUMBER})+")


def dash_list(answer: str) -> tuple[tuple[str, str], ...] | None:
    """The numbers of an answer written as a range or dash-separated list, each as (whole, fraction) digits with
    leading and trailing zeros dropped (``10.0-15`` is ``10-15``); None for any other answer."""
    if len(answer) > 1000 or not _DASH_LIST.fullmatch(answer):
        return None
    numbers = [n.partition(".") for n in re.findall(_NUMBER, answer)]
    return tuple((whole.lstrip("0") or "0", fraction.rstrip("0")) for whole, _, fraction in numbers)


# Units an answer may end in, each name -> its key (plurals are read too). Only these are compared: an answer
# whose trailing words are not all known units is not judged by its unit (math-verify's normalisation drops them).
_UNIT_NAMES = {
    "mm": "mm millimeter millimetre", "cm": "cm centimeter centimetre", "m": "m meter metre",
    "km": "km kilometer kilometre", "in": "in inch", "ft": "ft foot feet", "yd": "yd yard", "mi": "mi mile",
    "mg": "mg milligram", "g": "g gm gram", "kg": "kg kilogram", "lb": "lb pound", "oz": "oz ounce",
    "ml": "ml milliliter millilitre", "l": "l liter litre", "gal": "gal gallon",
    "s": "s sec second", "min": "min minute", "h": "h hr hour", "day": "day", "week": "wk week",
    "month": "month", "year": "yr year", "cent": "cent \u00a2", "dollar": "dollar usd",
    "deg": "deg degree \u00b0", "rad": "rad radian", "km/h": "kmh kph kmph", "mi/h": "mph",
}
_UNITS = {name: key for key, names in _UNIT_NAMES.items() for name in names.split()}
# the trailing pieces of a unit, read from the end: \text{ cm}, a word, a degree sign, a power, a slash
_UNIT_PIECE = re.compile(r"(?:\\(?:text|mbox|mathrm|textrm|textnormal|textup|rm)\s*\{([^{}]*)\}"
                         r"|(?<![\\A-Za-z])([A-Za-z\u00a2]+)\.?|(\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree)"
                         r"|\^\s*\{?\s*(-?\d)\s*\}?|/)\s*$")
_TRAILING_SPACE = re.compile(r"(?:\s|\\[,;:! ]|~)+$")


def _unit_name(word: str) -> str | None:
    if word in _UNITS:
        return _UNITS[word]
    for plural in ("es", "s"):  # inches, meters; never "ms" -> "m" (a word of two letters is no plural)
        if len(word) > 2 and word.endswith(plural) and word[: -len(plural)] in _UNITS:
            return _UNITS[word[: -len(plural)]]
    return None


def unit_key(phrase: str) -> str | None:
    """One key per unit, however written (``cm^2``, ``square centimeters``, ``sq cm``; ``km/h``, ``kilometers per
    hour``); None unless every part is a known unit."""
    phrase = re.sub(r"\s+", " ", phrase.lower().replace("\\circ", "\u00b0")).strip().rstrip(".")
    phrase = re.sub(r"\s*(/|\^)\s*", r"\1", re.sub(r"\s+per\s+", "/", phrase))
    for pattern, power in ((r"(?:square|sq\.?) (.+)|(.+) squared", 2), (r"(?:cubic|cu\.?) (.+)|(.+) cubed", 3)):
        match = re.fullmatch(pattern, phrase)
        if match:
            inner = unit_key(match.group(1) or match.group(2))
            return f"{inner}^{power}" if inner and "^" not in inner and "/" not in inner else None
    if phrase in _UNITS:
        return _UNITS[phrase]
    keys = []
    for part in phrase.split("/"):
        match = re.fullmatch(r"([a-z\u00a2\u00b0]+)(?:\^\{?(-?\d)\}?)?", part)
        name = _unit_name(match.group(1)) if match else None
        if name is None:
            return None
        keys.append(name + (f"^{match.group(2)}" if match.group(2) and match.group(2) != "1" else ""))
    return "/".join(keys)


def split_unit(answer: str) -> tuple[str, str | None]:
    """(the answer without its unit, the unit's key) when it ends in a known unit after a value (``12 \\text{ cm}``,
    ``30^\\circ``, ``5 km/h``, ``864 \\mbox{ inches}^2``); else (the answer, None). Reads the last 200 characters."""
    answer = answer.rstrip()
    cut = max(0, len(answer) - 200)
    head, pieces = answer[cut:], []
    for _ in range(8):
        match = _UNIT_PIECE.search(head)
        if not match:
            break
        text, word, degree, power = match.groups()
        pieces.insert(0, text if text is not None else word or ("\u00b0" if degree else f"^{power}" if power else "/"))
        head = head[: match.start()]
    value = answer[:cut] + _TRAILING_SPACE.sub("", head)
    key = unit_key(" ".join(pieces)) if pieces and value.strip() else None
    return (value, key) if key else (answer, None)


def _number_text(value) -> str:
    """27.0 -> "27" (AMC 23 stores floats); other values as they are."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _gsm8k(record: dict) -> str:
    return record["answer"].rsplit("####", 1)[-1]


def _last_box_of_solution(record: dict) -> str:
    return extract_boxed(record["solution"])


def _olympiadbench(record: dict) -> str:
    """``final_answer`` is a list (several answers when ``is_multiple_answer``); each item may carry ``$``s.

    The items become one comma-separated answer, which math-verify reads as a set (order-free).
    The ``unit`` is not appended: math-verify strips units from the response, so the number alone compares.
    """
    answers = record["final_answer"]
    if isinstance(answers, str):
        answers = [answers]
    return ", ".join(str(a).replace("$", "").strip() for a in answers)


def _answer_field(record: dict) -> str:
    return _number_text(record["answer"])


GOLD_FIELDS = {
    "gsm8k": _gsm8k,
    "math500": _answer_field,
    "minerva_math": _last_box_of_solution,
    "olympiadbench": _olympiadbench,
    "aime24": _answer_field,
    "amc23": _answer_field,
}


def gold_answer(record: dict, source: str) -> str:
    """The normalised gold answer of one benchmark record. ``source`` is a key of ``GOLD_FIELDS``
    (a file name such as ``gsm8k_test.jsonl`` also works); records of other sources use ``gold`` or ``answer``."""
    source = source.rsplit("/", 1)[-1].removesuffix(".jsonl").removesuffix("_test")
    if source in GOLD_FIELDS:
        return normalize_answer(GOLD_FIELDS[source](record))
    for field in ("gold", "answer", "final_answer"):
        if field in record and record[field] is not None:
            return normalize_answer(_number_text(record[field]))
    return ""
