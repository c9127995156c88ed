"""Plain-text arithmetic ("1/2", "3 * (4 + 5)", "2^10") into sympy, without evaluating text as code.

math-verify's expression extraction finds such text with a regex (digits, ``.``, spaces and
``+ - * / ^ ( )`` only) and hands it to sympy's ``parse_expr``, which calls ``eval``. We install
``arithmetic`` in its place for the duration of our own calls (``expressions_without_eval``): the
text is read by Python's parser into a syntax tree (nothing runs), and only numbers and the four
operations and powers become sympy objects, unevaluated, exactly as ``parse_expr(..., evaluate=False)``
would build them. Anything else (names, calls, attributes, subscripts) is refused with ValueError,
which math-verify treats as "no expression here".
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib

_MAX_CHARS = 1000  # longer text is not an answer; the regex allows it, we refuse it


@functools.cache
def _sympy():
    import sympy

    return sympy


def _number(node: ast.Constant, text: str):
    """A literal as written: an integer exactly, a decimal with every digit it has (never through a Python float,
    which turns 400 digits into infinity and drops those past the 17th). Infinities are refused."""
    sympy = _sympy()
    if isinstance(node.value, int):
        return sympy.Integer(node.value)
    literal = ast.get_source_segment(text, node) or repr(node.value)
    digits = sum(c.isdigit() for c in literal.lower().partition("e")[0])
    value = sympy.Float(literal, max(15, digits))
    if not value.is_finite:
        raise ValueError("not a finite number")
    return value


def _build(node: ast.AST, text: str):
    sympy = _sympy()
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _number(node, text)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _build(node.operand, text)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp):
        left, right = _build(node.left, text), _build(node.right, text)
        if isinstance(node.op, ast.Add):
            return sympy.Add(left, right, evaluate=False)
        if isinstance(node.op, ast.Sub):
            return sympy.Add(left, sympy.Mul(-1, right, evaluate=False), evaluate=False)
        if isinstance(node.op, ast.Mult):
            return sympy.Mul(left, right, evaluate=False)
        if isinstance(node.op, ast.Div):
            return sympy.Mul(left, sympy.Pow(right, -1, evaluate=False), evaluate=False)
        if isinstance(node.op, ast.Pow):
            return sympy.Pow(left, right, evaluate=False)
    raise ValueError(f"not plain arithmetic: {type(node).__name__}")


@functools.lru_cache(maxsize=256)
def arithmetic(text: str):
    """The sympy expression of ``text`` if it is numbers, ``+ - * / **`` and parentheses; else ValueError."""
    if not isinstance(text, str) or len(text) > _MAX_CHARS:
        raise ValueError("not plain arithmetic")
    source = text.strip()
    try:
        tree = ast.parse(source, mode="eval")  # parsing builds a tree; it runs nothing
    except (SyntaxError, ValueError, MemoryError, RecursionError) as error:  # ValueError: int beyond 4300 digits
        raise ValueError("not plain arithmetic") from error
    return _build(tree.body, source)


_HOOK = "parse_expr_cached"  # math_verify.parser's one call into sympy's parse_expr


@functools.cache
def hook_available() -> bool:
    """Whether the installed math-verify routes expression text through the function we replace. If a
    version does not, its expression extraction is never used (see verify.py), rather than run eval."""
    return callable(getattr(importlib.import_module("math_verify.parser"), _HOOK, None))


@contextlib.contextmanager
def expressions_without_eval():
    """Within the block, math-verify reads plain-text expressions with ``arithmetic``, not ``parse_expr``."""
    module = importlib.import_module("math_verify.parser")
    original = getattr(module, _HOOK)
    setattr(module, _HOOK, arithmetic)
    try:
        yield
    finally:
        setattr(module, _HOOK, original)
