"""The shape of the package: sub-packages in layers that import only downwards, no import cycles, only the CLI
prints, small files and functions."""

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


# The layers, bottom first, written once: a unit (a top-level module or a sub-package) may import only units in
# tiers below its own, and any module of its own sub-package. Units of one tier know nothing of each other.
LAYERS = [
    ("errors", "atomic", "rng", "lazy"),  # foundations: no ddpm imports
    ("runtime", "safeload"),       # devices, threads, precision; reading foreign weights safely
    ("diffusion",),                # the schedule, the Gaussian process, the bound
    ("config",),                   # the dataclasses a run is made of (builds a diffusion)
    ("nn", "data"),                # the UNet; images in
    ("run",),                      # the run directory and the files ddpm owns
    ("interop", "viz"),            # diffusers both ways; pictures and plots
    ("sampling",),                 # samplers, guidance, jobs, outputs, interpolation
    ("training", "evaluation"),    # the trainer and train_run; bits/dim, FD and features
    ("cli",),                      # the command line: the only layer that prints
    ("__main__",),
]
TIER = {unit: i for i, tier in enumerate(LAYERS) for unit in tier}


def _unit(module: str) -> str:
    return module.split(".")[1]


def test_every_module_has_a_layer():
    assert {_unit(m) for m in GRAPH if m != "ddpm"} <= set(TIER), set(map(_unit, GRAPH)) - set(TIER) - {"ddpm"}
    assert len(TIER) == sum(map(len, LAYERS)), "a unit is in two tiers"


def test_layers_import_only_downwards():
    wrong = [f"{m} imports {n}" for m in GRAPH if m != "ddpm" for n in GRAPH[m]
             if _unit(n) != _unit(m) and TIER[_unit(n)] >= TIER[_unit(m)]]
    assert not wrong, "\n".join(wrong)


def test_only_the_cli_prints():
    for path, module in MODULES.items():
        if _unit(module) in ("cli", "__main__"):
            continue
        calls = [n.lineno for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Name) and n.func.id in ("print", "input")]
        assert not calls, f"{path.relative_to(SRC)} prints at lines {calls}"


def test_files_and_functions_stay_small():
    for path in MODULES:
        lines = path.read_text().count("\n")
        assert lines <= (300 if MODULES[path] == "ddpm.cli.commands" else 400), f"{path.name}: {lines} lines"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                assert length <= 60, f"{path.name}:{node.name} is {length} lines"
