"""Final-answer extraction from model text: the last ``\\boxed{...}`` wins, then optional fallbacks.

Everything here is linear in the length of the text (one brace-matching pass, regexes
without nested quantifiers), so a 10^5-character response costs milliseconds, never more.
"""

from __future__ import annotations

import re

BOX_COMMANDS = ("\\boxed", "\\fbox")

# "The answer is 42", "final answer: $\frac{1}{2}$." -- the phrase most unboxed formats end on.
_ANSWER_IS = re.compile(r"answer\s*(?:is|:)\s*:?\s*([^\n]{1,200}?)\s*(?:\.(?:\s|$)|\n|$)", re.IGNORECASE)
# GSM8K's own format: "#### 18".
_HASHES = re.compile(r"####\s*([^\n]{1,100})")
# A number such as -1,234.5 or 3/4 (the regex has no nested quantifiers: linear time).
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?")


def extract_boxed(text: str) -> str:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced; "" if none.

    Braces are matched in one forward pass, so nested braces (``\\boxed{\\frac{1}{2}}``) are
    kept whole and thousands of unbalanced braces cost linear time. An unclosed last box yields "".
    """
    starts = [(m.start(), m.end()) for m in re.finditer(r"\\(?:boxed|fbox)(?![A-Za-z])", text)]
    if not starts:
        return ""
    closing = _matching_braces(text)
    for _, end in reversed(starts):
        i = end
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            j = closing.get(i)
            return text[i + 1 : j].strip() if j is not None else ""
    return ""


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


def _last_number(text: str) -> str:
    """The last number on the last non-empty line."""
    lines = [line for line in text[-2000:].splitlines() if line.strip()]
    numbers = _NUMBER.findall(lines[-1]) if lines else []
    return numbers[-1].rstrip(",") if numbers else ""


# Tried in order after the box, when a response has none. A visible dict: grep finds every fallback.
FALLBACKS = {"answer_is": _answer_is, "gsm8k_hashes": _gsm8k_hashes, "last_number": _last_number}
# "The answer is X" commits to an answer as clearly as a box; a bare last number does not, so it is opt-in.
DEFAULT_FALLBACKS = ("answer_is",)


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
    if any(cmd in response for cmd in BOX_COMMANDS):
        return clean_answer(extract_boxed(response))  # a box was attempted: no fallback overrides it
    for name in fallbacks:
        found = clean_answer(FALLBACKS[name](response))
        if found:
            return found
    return ""
