"""The layering, read from the source with ``ast``: fleet -> loadtest -> service -> exporters -> model, no cycles.

- no package imports one above it (``model`` imports nothing of ours but itself);
- inside ``model``, ``service`` and ``loadtest``, each sub-package (or root module) imports only the ones below it
  in ``SUBLAYERS``: the network at ``model/``'s root imports nothing from ``model/data``, ``model/training`` or
  ``model/evaluation``; the engine imports nothing of the HTTP side;
- no import cycles between modules (inside a package or across packages);
- project modules are imported at module level only (``if TYPE_CHECKING:`` counts as module level), except in
  the CLI glue ``*/commands.py`` (and ``*_commands.py``), whose handlers import lazily so that ``adafocus --help``
  stays fast.
And the scheduler is pure: importing it loads neither torch nor numpy.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("model", "exporters", "service", "loadtest", "fleet")  # bottom to top: each may import only those before it
# Inside each package, bottom to top: a unit is a sub-package (``service.engine``) or a root module
# (``service.settings``); ``model``'s root modules (the network) are one unit, named ``model``. A unit imports only
# itself and the units before it.
SUBLAYERS: dict[str, tuple[str, ...]] = {
    "model": ("model", "model.data", "model.training", "model.evaluation", "model.testing", "model.commands"),
    "service": (
        "service.engine", "service.decode", "service.logs", "service.schemas", "service.metrics", "service.tracing",
        "service.settings",
        "service.budget", "service.lifecycle", "service.classify", "service.http", "service.app", "service.startup",
        "service.client", "service.client_output", "service.commands", "service.cli",
    ),
    "loadtest": (
        "loadtest.report", "loadtest.schedule", "loadtest.encode", "loadtest.cli_args", "loadtest.markdown",
        "loadtest.plots", "loadtest.http", "loadtest.bench", "loadtest.commands",
    ),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> tuple[set[str], list[tuple[int, str]]]:
    """(project modules imported at module level, (line, module) of project imports inside functions)."""
    tree = ast.parse(path.read_text(), str(path))
    top: set[str] = set()
    local: list[tuple[int, str]] = []

    def names(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            return [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        return []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            for name in names(child):
                if name.split(".")[0] in LAYERS:
                    (local.append((child.lineno, name)) if in_function else top.add(name))  # type: ignore[func-returns-value]
            visit(child, inner)

    visit(tree, False)
    return top, local


def graph() -> tuple[dict[str, set[str]], dict[str, list[tuple[int, str]]]]:
    files = {module_name(p): p for pkg in LAYERS for p in (ROOT / pkg).rglob("*.py")}
    edges: dict[str, set[str]] = {}
    local: dict[str, list[tuple[int, str]]] = {}
    for name, path in files.items():
        top, inner = imports(path)
        # ``from pkg import module`` names a module; ``from module import name`` names the module
        edges[name] = {m for m in top if m in files and m != name}
        local[str(path.relative_to(ROOT))] = inner
    return edges, local


def test_no_upward_imports() -> None:
    edges, _ = graph()
    rank = {pkg: i for i, pkg in enumerate(LAYERS)}
    upward = [(a, b) for a, deps in edges.items() for b in deps if rank[b.split(".")[0]] > rank[a.split(".")[0]]]
    assert not upward, f"imports up the layering {LAYERS}: {upward}"


def unit_of(module: str) -> str:
    """The SUBLAYERS unit a module belongs to (its sub-package, else itself; ``model``'s root modules: ``model``)."""
    parts = module.split(".")
    units = SUBLAYERS[parts[0]]
    for depth in (2, 1):
        name = ".".join(parts[:depth])
        if len(parts) >= depth and name in units:
            return name
    return parts[0] if parts[0] == "model" and len(parts) == 2 else module


def test_sub_packages_import_only_downwards() -> None:
    edges, _ = graph()
    placed = {u for us in SUBLAYERS.values() for u in us}
    inside = [m for m in edges if m.split(".")[0] in SUBLAYERS and "." in m]  # the packages' own __init__ aside
    unplaced = sorted({unit_of(m) for m in inside} - placed)
    assert not unplaced, f"modules in no unit of SUBLAYERS: {unplaced}"
    upward = []
    for a in inside:
        deps = edges[a]
        units = SUBLAYERS[a.split(".")[0]]
        for b in deps:
            if b.split(".")[0] == a.split(".")[0] and "." in b and units.index(unit_of(b)) > units.index(unit_of(a)):
                upward.append((a, b))
    assert not upward, f"imports up a package's sub-layers: {upward}"


def test_every_unit_of_the_sub_layers_exists() -> None:
    missing = [u for us in SUBLAYERS.values() for u in us if not (ROOT / u.replace(".", "/")).is_dir()
               and not (ROOT / (u.replace(".", "/") + ".py")).is_file()]
    assert not missing, f"SUBLAYERS names what does not exist: {missing}"


def test_no_import_cycles() -> None:
    edges, _ = graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles: list[list[str]] = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(edges.get(node, ())):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                walk(dep, [*path, dep])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            walk(node, [node])
    assert not cycles, f"import cycles: {cycles}"


def test_project_imports_are_at_module_level() -> None:
    _, local = graph()
    offenders = {
        path: lines for path, lines in local.items()
        if lines and not path.endswith("commands.py")  # */commands.py, loadtest/bench/server_commands.py
    }
    assert not offenders, f"function-local imports of project modules: {offenders}"


def test_the_scheduler_imports_neither_torch_nor_numpy() -> None:
    code = (
        "import sys, service.engine.scheduler; "
        "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


MAX_LINES = 450
MAX_FUNCTION_LINES = 60
# Argument-parser registration and metric declaration tables: long, flat lists of declarations.
LONG_DECLARATIONS = {"register", "Metrics.__init__"}


def test_no_module_over_450_lines() -> None:
    long = {
        str(p.relative_to(ROOT)): n
        for pkg in LAYERS
        for p in (ROOT / pkg).rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_no_function_over_60_lines() -> None:
    long = []
    for pkg in LAYERS:
        for path in (ROOT / pkg).rglob("*.py"):
            tree = ast.parse(path.read_text(), str(path))
            classes = {id(f): c.name for c in ast.walk(tree) if isinstance(c, ast.ClassDef) for f in c.body}
            for node in ast.walk(tree):
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                name = f"{classes[id(node)]}.{node.name}" if id(node) in classes else node.name
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES and name not in LONG_DECLARATIONS:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {name} ({lines} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_the_plain_server_never_imports_ray() -> None:
    """Ray is an optional extra: the CLI (serve-ray registered too) and the app load with `ray` unimportable."""
    code = (
        "import sys; sys.modules['ray'] = None; "  # None: any `import ray` raises ImportError
        "import service.app, service.cli; service.cli.build_parser(); print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
