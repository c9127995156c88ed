"""The house rules that keep the code navigable, checked on the source itself (the figures of issue 23)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("offline_rl", "rewards", "rollout")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports, at any depth of its code (``from a import b`` counts a.b if a module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {n for n in names if n in modules}


def test_no_two_modules_import_each_other_directly_or_in_a_loop():
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    for name in graph:  # a package's __init__ importing its own submodules is how a package is built, not a loop
        graph[name] = {m for m in graph[name] if not (m.startswith(name + ".") and modules[name].name == "__init__.py")}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != 1, "import loop: " + " -> ".join([*path[path.index(nxt):], nxt])
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_the_packages_depend_one_way():
    modules = _modules()
    for name, path in modules.items():
        imported = _imports(path, modules)
        if name.startswith("rewards"):
            assert not {m for m in imported if m.startswith(("rollout", "offline_rl"))}, name
        if name.startswith("rollout"):
            assert not {m for m in imported if m.startswith("offline_rl")}, name


WRITERS = {"write_text", "write_bytes", "mkdir", "rename", "unlink", "rmtree", "atomic_write", "touch", "savefig",
           "write_table", "save_pretrained", "to_parquet", "makedirs", "remove", "copyfile", "copytree"}


def test_rewards_writes_no_file():
    for path in (ROOT / "rewards").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            where = f"{path.name}:{node.lineno}"
            assert name not in WRITERS, f"{where} calls {name}"
            assert not (name == "replace" and isinstance(func.value, ast.Name) and func.value.id == "os"), where
            if name == "open":
                modes = [a.value for a in node.args[1:2] if isinstance(a, ast.Constant)]
                modes += [k.value.value for k in node.keywords if k.arg == "mode" and isinstance(k.value, ast.Constant)]
                assert not any(set(m) & set("wax+") for m in modes), f"{where} opens a file for writing"


def test_no_function_is_over_100_lines():
    long = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > 100:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})")
    assert not long, long


def test_commands_call_each_other_as_functions_never_through_argv():
    """No command's main, no bin/ script and no COMMANDS table is called from inside the packages (but the
    ``offline-rl`` dispatcher itself and the table's own module), and no subprocess runs one."""
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if path in (ROOT / "offline_rl" / "cli.py", ROOT / "offline_rl" / "commands.py"):
                continue
            text = path.read_text()
            assert "COMMANDS[" not in text and '"bin"' not in text, path
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "main":
                    raise AssertionError(f"{path.relative_to(ROOT)}:{node.lineno} calls a command's main")


def test_every_command_has_its_config_a_run_function_taking_the_one_context_and_a_main():
    """Commands alike: each command's module has ``XConfig``, ``run_x(cfg: XConfig, ..., *, context)`` and
    ``main(argv, *, context)``, with one context type (what offline-rl gives every command)."""
    import dataclasses
    import inspect

    from offline_rl import commands

    assert len(commands.COMMANDS) == 12
    for name in commands.COMMANDS:
        config, run, main = commands.config_class(name), commands.run_function(name), commands.module(name).main
        assert dataclasses.is_dataclass(config), name
        for function, first in ((run, config.__name__), (main, "list[str] | None")):
            parameters = list(inspect.signature(function).parameters.values())
            assert parameters[0].annotation == first, (name, function.__name__, parameters[0])
            context = parameters[-1]
            assert (context.name, context.kind) == ("context", inspect.Parameter.KEYWORD_ONLY), (name, function)
            assert context.annotation == "CommandContext | None" and context.default is None, (name, function.__name__)
            assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in parameters[1:-1]), (name, function)
