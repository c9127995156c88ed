"""Gold answers per benchmark source, and the normalisation applied to both sides before comparing.

Each benchmark stores its gold differently; ``gold_answer(record, source)`` turns a record into
the one answer string a response's final answer is compared with.
"""

from __future__ import annotations

import re

from rewards.extract import clean_answer, extract_boxed, normalize_unicode

# 10{,}000 / 10\,000 / 10\!000: LaTeX spacing between digit groups; 1,234,567 as a whole answer.
_LATEX_SEPARATOR = re.compile(r"(?<=\d)(?:\{,\}|\\,|\\!)(?=\d{3})")
_PLAIN_GROUPED = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def normalize_answer(answer: str) -> str:
    """Normalise an extracted or gold answer without changing its value.

    Thousands separators go: ``10{,}000`` and ``10\\,000`` anywhere (LaTeX spacing, never a list),
    ``1,234,567`` only when it is the whole answer (``1,234`` inside a tuple may be two numbers).
    Units, degrees and percent are left to math-verify's own normalisation, which both sides share.
    """
    answer = clean_answer(normalize_unicode(answer))
    answer = re.sub(r"^\\\$\s*|^\$\s*(?=\d)", "", answer)  # "\$18" and "$18": currency, not math mode
    answer = _LATEX_SEPARATOR.sub("", answer)
    if _PLAIN_GROUPED.fullmatch(answer):
        answer = answer.replace(",", "")
    answer = re.sub(r"(?<=\d)\./(?=\d)", "/", answer)  # "-1./3": a C-style float literal in some golds
    return answer.strip()


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
