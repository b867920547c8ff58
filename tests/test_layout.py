"""The shape of the package: no import cycles, sampling never imports training, small files and functions."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "ddpm"
MODULES = {p: ".".join(p.relative_to(SRC.parent).with_suffix("").parts) for p in SRC.rglob("*.py")}
NAMES = {m.removesuffix(".__init__") for m in MODULES.values()}


def _imports(path: Path) -> set:
    """The ddpm modules a module imports, at the top or inside functions (a lazy import is still an edge)."""
    pkg = MODULES[path].rsplit(".", 1)[0] if path.name != "__init__.py" else MODULES[path].removesuffix(".__init__")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in NAMES}
    return found - {"ddpm"}


GRAPH = {MODULES[p].removesuffix(".__init__"): _imports(p) for p in MODULES}


def test_no_import_cycles():
    state = {}

    def visit(m, stack):
        state[m] = "open"
        for n in GRAPH.get(m, ()):
            if state.get(n) == "open":
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n, stack + [n])
        state[m] = "done"

    for m in GRAPH:
        if m not in state:
            visit(m, [m])


def _reaches(a: str, b: str) -> bool:
    seen, todo = set(), [a]
    while todo:
        m = todo.pop()
        if m == b:
            return True
        seen.add(m)
        todo += [n for n in GRAPH.get(m, ()) if n not in seen]
    return False


def test_data_flows_one_way():
    assert not _reaches("ddpm.sampling", "ddpm.train")
    for low in ("ddpm.schedule", "ddpm.diffusion", "ddpm.losses"):
        for high in ("ddpm.unet", "ddpm.train", "ddpm.run", "ddpm.cli", "ddpm.data"):
            assert not _reaches(low, high), f"{low} imports {high}"
    assert not any(_reaches(m, "ddpm.cli") for m in GRAPH if m != "ddpm.cli" and m != "ddpm.__main__")


def test_files_and_functions_stay_small():
    for path in MODULES:
        lines = path.read_text().count("\n")
        assert lines <= (300 if path.name == "cli.py" else 400), f"{path.name}: {lines} lines"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                assert length <= 60, f"{path.name}:{node.name} is {length} lines"
