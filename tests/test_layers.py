"""The package's imports run downward only: a module imports its own layer or lower ones, the
entry points import no other entry point, and nothing imports in a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import dcgan_xai

PACKAGE = Path(dcgan_xai.__file__).parent

# lowest first; a module's layer is that of its first dotted name under the package
LAYERS = [
    {"errors", "numerics", "files", "state"},
    {"data"},
    {"xai"},
    {"models"},
    {"config", "checks"},
    {"metrics"},
    {"runs"},
    {"callbacks"},
    {"training", "seeds"},
    {"analysis"},
]
ENTRY_POINTS = {"train", "analyze", "curate", "aggregate", "study"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The project modules ``path`` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n for n in names if n.startswith("dcgan_xai.")}
    return found


def layer(name: str) -> int:
    top = name.split(".")[1]
    if top in ENTRY_POINTS:
        return len(LAYERS)
    return next(i for i, group in enumerate(LAYERS) if top in group)


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {m for m in imports(path) if m in modules and m != name}
        for name, path in modules.items()
    }


def test_every_module_has_a_layer():
    for name in graph():
        if name != "dcgan_xai":
            layer(name)  # raises StopIteration for a module no layer names


def test_no_import_runs_up_a_layer_or_between_entry_points():
    upward = [
        f"{a} -> {b}"
        for a, targets in graph().items()
        if a != "dcgan_xai"
        for b in targets
        if layer(b) > layer(a) or (layer(a) == layer(b) == len(LAYERS))
    ]
    assert not upward


def test_no_import_cycle():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            assert state.get(nxt) != 1, " -> ".join([*path, node, nxt])
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])


def test_the_config_schema_loads_without_captum():
    import subprocess
    import sys

    code = "import sys, dcgan_xai.config, dcgan_xai.training; print('captum' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# the rooms of the run-dir package, lowest first: each imports only the rooms below it
RUNS_ROOMS = ["layout", "tables", "ownership", "resume", "load"]


def test_the_run_dir_package_imports_downward():
    edges = graph()
    rooms = {f"dcgan_xai.runs.{r}": i for i, r in enumerate(RUNS_ROOMS)}
    assert {m for m in edges if m.startswith("dcgan_xai.runs.")} == set(rooms)
    upward = [f"{a} -> {b}" for a in rooms for b in edges[a] if b in rooms and rooms[b] >= rooms[a]]
    assert not upward


def test_the_pure_cores_import_no_lightning_and_no_config():
    """``xai`` (the Grad-CAM core) and ``analysis.selection``/``analysis.evidence`` (the
    decision rules) take tensors and rows, not configs, runs or trainers."""
    for name in ("xai", "analysis/selection.py", "analysis/evidence.py"):
        paths = [PACKAGE / name] if name.endswith(".py") else (PACKAGE / name).rglob("*.py")
        for path in paths:
            text = path.read_text()
            assert "import lightning" not in text and "from lightning" not in text, path
            assert not {m for m in imports(path) if m.split(".")[1] in ("config", "runs")}, path
