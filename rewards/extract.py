"""Final-answer extraction from model text: the last ``\\boxed{...}`` wins, then optional fallbacks.

Everything here is linear in the length of the text (one brace-matching pass, regexes
without nested quantifiers), so a 10^5-character response costs milliseconds, never more.
"""

from __future__ import annotations

import re
import unicodedata

BOX_COMMANDS = ("\\boxed", "\\fbox")

# "The answer is 42", "final answer: $\frac{1}{2}$." -- the phrase most unboxed formats end on.
_ANSWER_IS = re.compile(r"answer\s*(?:is|:)\s*:?\s*([^\n]{1,200}?)\s*(?:\.(?:\s|$)|\n|$)", re.IGNORECASE)
# GSM8K's own format: "#### 18".
_HASHES = re.compile(r"####\s*([^\n]{1,100})")
# A number such as -1,234.5 or 3/4 (the regex has no nested quantifiers: linear time).
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"))
# after NFKC: what Unicode writes that LaTeX and math-verify read otherwise
_SYMBOLS = {"\u2212": "-", "\u2013": "-", "\u2044": "/", "\u00d7": "\\times ", "\u00f7": "\\div ", "\u221a": "\\sqrt",
            "\u03c0": "\\pi ", "\u00b0": "^{\\circ}", "\u2264": "\\le ", "\u2265": "\\ge ", "\u221e": "\\infty "}
# Cyrillic and Greek letters that look like Latin ones (a model's tokenizer can swap them)
_LOOKALIKES = dict(zip("\u0430\u0435\u043e\u0440\u0441\u0445\u0443\u0410\u0412\u0415\u041a\u041c\u041d\u041e"
                       "\u0420\u0421\u0422\u0425\u0391\u0392\u0395\u039a\u039c\u039f\u03a1\u03a4\u03a7",
                       "aeopcxyABEKMHOPCTXABEKMOPTX", strict=True))
_SYMBOL_RE = re.compile("|".join(map(re.escape, _SYMBOLS)))
_LOOKALIKE_TABLE = str.maketrans(_LOOKALIKES)


def normalize_unicode(text: str) -> str:
    """NFKC (full-width and mathematical-bold digits, ``½`` -> ``1⁄2``), zero-width characters removed,
    look-alike Cyrillic/Greek letters mapped to Latin, and the Unicode minus, fraction slash, √, π, °,
    ≤, ≥, ∞, ×, ÷ written as LaTeX reads them. Linear time."""
    if text.isascii():
        return text
    text = unicodedata.normalize("NFKC", text).translate(_ZERO_WIDTH).translate(_LOOKALIKE_TABLE)
    return _SYMBOL_RE.sub(lambda m: _SYMBOLS[m.group()], text)


_BARE_BOX = re.compile(r"\\(boxed|fbox) +([^\s{$][^\s$]{0,199})")


def brace_bare_boxes(text: str) -> str:
    """``\\boxed 5`` -> ``\\boxed{5}``: what TeX reads, for parsers that need the braces."""
    return _BARE_BOX.sub(lambda m: f"\\{m.group(1)}{{{m.group(2).rstrip('.,;')}}}", text)


def extract_boxed(text: str) -> str:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced; "" if none.

    Braces are matched in one forward pass, so nested braces (``\\boxed{\\frac{1}{2}}``) are
    kept whole and thousands of unbalanced braces cost linear time. An unclosed last box yields "", and so does
    a box command that ends the text: an earlier box, abandoned, is not the answer.
    """
    starts = [(m.start(), m.end()) for m in re.finditer(r"\\(?:boxed|fbox)(?![A-Za-z])", text)]
    if not starts or not text[starts[-1][1] :].strip():
        return ""
    closing = _matching_braces(text)
    for _, end in reversed(starts):
        i = end
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            j = closing.get(i)
            return text[i + 1 : j].strip() if j is not None else ""
        if i > end:  # "\boxed 5": TeX takes the next token as the argument
            bare = re.match(r"[^\s$]+", text[i : i + 200])
            if bare:
                return bare.group().rstrip(".,;")
    return ""


def last_box_is_open(text: str) -> bool:
    """Whether the last ``\\boxed{`` (or ``\\fbox{``) of ``text`` is never closed, or a box command ends the text:
    an answer begun and abandoned (or cut off), after which no earlier box stands as the answer."""
    last = next(reversed(list(re.finditer(r"\\(?:boxed|fbox)(?![A-Za-z]) *", text))), None)
    if last is None:
        return False
    if not text[last.end() :].strip():
        return True
    return text[last.end()] == "{" and last.end() not in _matching_braces(text)


def _matching_braces(text: str) -> dict[int, int]:
    """Position of each ``{`` -> position of its matching ``}`` (unmatched ones are absent)."""
    closing, stack = {}, []
    for m in re.finditer(r"[{}]", text):
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            closing[stack.pop()] = m.start()
    return closing


def _answer_is(text: str) -> str:
    matches = list(_ANSWER_IS.finditer(text))
    return matches[-1].group(1) if matches else ""


def _gsm8k_hashes(text: str) -> str:
    matches = list(_HASHES.finditer(text))
    return matches[-1].group(1) if matches else ""


def _last_number_anywhere(text: str) -> str:
    """The last number of the whole response, commas dropped (the Qwen2.5-Math harness's last resort)."""
    numbers = re.findall(r"-?\d*\.?\d+", text[-5000:].replace(",", ""))
    return numbers[-1] if numbers else ""


def _last_number(text: str) -> str:
    """The last number on the last non-empty line."""
    lines = [line for line in text[-2000:].splitlines() if line.strip()]
    numbers = _NUMBER.findall(lines[-1]) if lines else []
    return numbers[-1].rstrip(",") if numbers else ""


# Tried in order after the box, when a response has none. A visible dict: grep finds every fallback.
FALLBACKS = {"answer_is": _answer_is, "gsm8k_hashes": _gsm8k_hashes, "last_number": _last_number,
             "last_number_anywhere": _last_number_anywhere}
# "The answer is X" commits to an answer as clearly as a box; a bare last number does not, so it is opt-in.
DEFAULT_FALLBACKS = ("answer_is",)
# Extraction modes, one name each, recorded wherever a score is stored:
# - boxed: the toolkit's strict rule, the last box, else "The answer is X";
# - qwen: the Qwen2.5-Math harness's order, the last box, else "the answer is", else the last number;
# - math-verify: math-verify's own LaTeX extraction over the whole response (no box needed).
# All three share normalize_unicode and read "\boxed 5".
EXTRACTIONS = {"boxed": ("answer_is",), "qwen": ("answer_is", "last_number_anywhere"), "math-verify": None}
DEFAULT_EXTRACTION = "boxed"


def clean_answer(answer: str) -> str:
    """Strip what surrounds an answer without changing it: spaces, ``$...$``, ``\\(...\\)``, a final period."""
    answer = answer.strip()
    for _ in range(3):
        before = answer
        answer = answer.strip().rstrip(".").strip()
        if answer.startswith("$") and answer.endswith("$") and len(answer) >= 2:
            answer = answer.strip("$")
        if answer.startswith("\\(") and answer.endswith("\\)"):
            answer = answer[2:-2]
        if answer.startswith("\\[") and answer.endswith("\\]"):
            answer = answer[2:-2]
        if answer == before:
            break
    return answer.strip()


def extract_answer(response: str, fallbacks: tuple[str, ...] = DEFAULT_FALLBACKS) -> str:
    """The final answer a response commits to ("" if none): the last box, else the first fallback that finds one.

    ``fallbacks`` names entries of ``FALLBACKS``; pass ``()`` to accept boxed answers only.
    """
    if not isinstance(response, str):
        return ""
    response = normalize_unicode(response)
    if any(cmd in response for cmd in BOX_COMMANDS):
        return clean_answer(extract_boxed(response))  # a box was attempted: no fallback overrides it
    for name in fallbacks:
        found = clean_answer(FALLBACKS[name](response))
        if found:
            return found
    return ""
