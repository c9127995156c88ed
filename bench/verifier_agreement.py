"""Agreement of each extraction mode with math-verify's own test suite.

math-verify's source distribution carries its regression tests: (gold, prediction, expected) rows in
``pytest.mark.parametrize`` tables. This bench downloads that sdist from PyPI (the version installed
here) into a temporary folder, reads the rows with ``ast`` (nothing of it is imported or run), scores
each prediction against its gold with ``rewards.score(..., extraction=MODE)`` and prints, per mode and
per test file, the share of rows where our verdict equals the suite's expected one.

The suite's rows use several math-verify settings (some expression-only, some other float precisions),
so 100 % is not the aim; the ``math-verify`` mode should agree on >= 95 %.

    python bench/verifier_agreement.py [--suite DIR]   # DIR: an unpacked math-verify tests/ folder
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rewards  # noqa: E402
from rewards.extract import clean_answer, extract_boxed  # noqa: E402


def download_suite(into: Path) -> Path:
    """math-verify's tests/ folder from its sdist, for the installed version."""
    spec = f"math-verify=={version('math-verify')}"
    subprocess.run([sys.executable, "-m", "pip", "download", spec, "--no-deps", "--no-binary", ":all:", "-q",
                    "-d", str(into)], check=True, capture_output=True)
    archive = next(into.glob("math_verify-*.tar.gz"))
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if "/tests/" in m.name and m.name.endswith(".py")]
        tar.extractall(into, members=members, filter="data")
    return next(into.glob("math_verify-*/tests"))


def rows(path: Path) -> list[tuple[str, str, int]]:
    """(gold, prediction, expected) of every literal parametrize table whose names start gold,pred,expected."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.FunctionDef):
            continue
        for decorator in node.decorator_list:
            if not (isinstance(decorator, ast.Call) and getattr(decorator.func, "attr", "") == "parametrize"
                    and len(decorator.args) >= 2 and isinstance(decorator.args[0], ast.Constant)):
                continue
            names = [n.strip() for n in str(decorator.args[0].value).split(",")]
            if names[:3] != ["gold", "pred", "expected"]:
                continue
            try:
                table = ast.literal_eval(decorator.args[1])
            except ValueError:  # a table built by code, not literals
                continue
            found += [(str(r[0]), str(r[1]), int(r[2])) for r in table if isinstance(r, tuple) and len(r) >= 3]
    return found


def gold_answer(gold: str) -> str:
    """The suite's gold texts ("$28\\%$", "\\boxed{...}") as the answer our API takes."""
    return extract_boxed(gold) or clean_answer(gold)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", help="an unpacked math-verify tests/ folder (default: download the sdist)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        suite = Path(args.suite) if args.suite else download_suite(Path(tmp))
        tables = {path.name: rows(path) for path in sorted(suite.glob("test_*.py"))}
        tables = {name: table for name, table in tables.items() if table}
        total = sum(map(len, tables.values()))
        print(f"math-verify {version('math-verify')} test suite: {total} rows in {len(tables)} files")
        for mode in rewards.EXTRACTIONS:
            agree = {}
            for name, table in tables.items():
                # math-verify mode takes a gold text as math-verify does; the box modes take the answer
                golds = [g if mode == "math-verify" else gold_answer(g) for g, _, _ in table]
                got = rewards.score_batch([p for _, p, _ in table], golds, extraction=mode, deadline=5.0)
                agree[name] = sum(1 for (_, _, want), g in zip(table, got, strict=True) if g == float(want))
            share = sum(agree.values()) / total
            files = ", ".join(f"{name} {agree[name]}/{len(tables[name])}" for name in tables)
            print(f"{mode:>12}: {share:.3f} agreement ({sum(agree.values())}/{total}); {files}", flush=True)


if __name__ == "__main__":
    main()
