"""Final-answer extraction from model text: the last ``\\boxed{...}`` wins."""

from __future__ import annotations

BOX_COMMANDS = ("\\boxed", "\\fbox")


def extract_boxed(text: str) -> str:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced; "" if none.

    Scans right to left for the last box command and matches braces forward, so
    nested braces (``\\boxed{\\frac{1}{2}}``) are kept whole. An unclosed box yields "".
    """
    start = max(text.rfind(cmd) for cmd in BOX_COMMANDS)
    while start != -1:
        cmd = next(c for c in BOX_COMMANDS if text.startswith(c, start))
        i = start + len(cmd)
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            depth = 0
            for j in range(i, len(text)):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        return text[i + 1 : j].strip()
            return ""
        start = max(text.rfind(c, 0, start) for c in BOX_COMMANDS)
    return ""
