"""The layout stays what docs/architecture.md says, read from the code's own imports.

Apps are floors: each imports only from the floors below it (projects at the ground, then
stacks, billing, portal). ``stacks/`` is three wings plus its pages and models. The Docker
SDK is used only behind the backend interface and by the image pipeline that builds the
catalog's images. No module reaches into another module's private names.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOORS = ["projects", "stacks", "billing", "portal"]
STACKS_TOP = {
    "__init__",
    "access",
    "admin",
    "api",
    "apps",
    "forms",
    "models",
    "tasks",
    "urls",
    "views",
    "views_live",
}
WINGS = {"catalog", "runtime", "backends", "management", "migrations"}
# The image pipeline builds, probes and publishes the catalog's images on the hoster's build
# engine: hoster machinery, not a customer backend.
DOCKER_ALLOWED = ("stacks/backends/", "stacks/catalog/pipeline.py", "stacks/catalog/samples.py")
EXCLUDED_DIRS = {"migrations", "samples", "images"}


def modules() -> Iterator[tuple[str, Path, ast.Module]]:
    for app in FLOORS:
        for path in sorted((ROOT / app).rglob("*.py")):
            if EXCLUDED_DIRS & set(path.relative_to(ROOT).parts):
                continue
            yield app, path, ast.parse(path.read_text(), str(path))


def imported(tree: ast.Module) -> Iterator[tuple[int, str, list[str]]]:
    """(line, module, names) for every import, at module level or inside functions."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module, [alias.name for alias in node.names]


def test_no_app_imports_a_floor_above_it() -> None:
    wrong = []
    for app, path, tree in modules():
        for line, module, _ in imported(tree):
            top = module.split(".")[0]
            if top in FLOORS and FLOORS.index(top) > FLOORS.index(app):
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not wrong, "imports that run up a floor:\n" + "\n".join(wrong)


def test_stacks_is_three_wings_and_its_pages() -> None:
    stacks = ROOT / "stacks"
    for wing in ("catalog", "runtime", "backends"):
        assert (stacks / wing / "__init__.py").is_file(), wing
    top = {p.stem for p in stacks.glob("*.py")}
    assert top <= STACKS_TOP, f"modules outside the wings: {sorted(top - STACKS_TOP)}"
    folders = {p.name for p in stacks.iterdir() if p.is_dir() and not p.name.startswith("__")}
    assert folders <= WINGS | {"templatetags"}, sorted(folders - WINGS)
    assert (stacks / "catalog" / "catalog.yaml").is_file() and (stacks / "catalog" / "images").is_dir()


def test_only_the_backends_and_the_image_pipeline_use_the_docker_sdk() -> None:
    wrong = []
    for _, path, tree in modules():
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(DOCKER_ALLOWED):
            continue
        for line, module, _ in imported(tree):
            if module.split(".")[0] == "docker":
                wrong.append(f"{rel}:{line} imports {module}")
    assert not wrong, "Docker SDK used outside the backends:\n" + "\n".join(wrong)


def test_the_wings_keep_their_order() -> None:
    """backends know nothing of the runtime or the catalog; the catalog nothing of the runtime."""
    lower = {"backends": ("stacks.runtime", "stacks.catalog"), "catalog": ("stacks.runtime",)}
    wrong = []
    for _, path, tree in modules():
        parts = path.relative_to(ROOT).parts
        if parts[0] != "stacks" or parts[1] not in lower:
            continue
        for line, module, _ in imported(tree):
            if module.startswith(lower[parts[1]]):
                wrong.append(f"{'/'.join(parts)}:{line} imports {module}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("floor", FLOORS)
def test_no_private_name_is_imported_across_modules(floor: str) -> None:
    wrong = []
    for app, path, tree in modules():
        if app != floor:
            continue
        for line, module, names in imported(tree):
            if module.split(".")[0] in FLOORS:
                wrong += [f"{path.relative_to(ROOT)}:{line} {module}.{n}" for n in names if n.startswith("_")]
    assert not wrong, "\n".join(wrong)


def test_nothing_outside_the_backends_reads_their_bookkeeping() -> None:
    """``Environment.backend_state`` is opaque: passed to the backend, stored, never read
    key by key elsewhere (where a stack lives is its ``Placement``)."""

    def is_state(node: ast.AST) -> bool:
        return isinstance(node, ast.Attribute) and node.attr == "backend_state"

    wrong = []
    for _, path, tree in modules():
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("stacks/backends/"):
            continue
        for node in ast.walk(tree):
            read = (isinstance(node, ast.Subscript) and is_state(node.value)) or (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("get", "keys", "items", "values", "setdefault", "pop")
                and is_state(node.func.value)
            )
            lookup = (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and "backend_state__" in node.value
            )
            if read or lookup:
                wrong.append(f"{rel}:{node.lineno}")
    assert not wrong, "backend state read outside the backends:\n" + "\n".join(wrong)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(body: list[ast.stmt]) -> Iterator[ast.ImportFrom | ast.Import]:
    """Imports that run when the module loads (not under ``if TYPE_CHECKING``, not in functions)."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and not (
            isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
        ):
            yield from _top_level_imports(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            yield from _top_level_imports(node.body + node.orelse + node.finalbody)


def test_modules_in_an_import_cycle_import_each_other_as_modules() -> None:
    """The runtime queues Celery tasks (``from stacks import tasks``) and ``stacks.tasks`` calls
    the runtime, so those modules form an import cycle. It loads from whichever module comes
    first only if they reach each other as modules (``from stacks.runtime import operations``,
    then ``operations.backend_for(...)`` at run time): ``from stacks.runtime.operations import
    backend_for`` fails when ``operations`` is the one still half-loaded."""
    known = {_module_name(path): tree for _, path, tree in modules()}
    edges: dict[str, set[str]] = {name: set() for name in known}
    by_name: list[tuple[str, int, str]] = []  # (importer, line, module whose names it takes)
    for name, tree in known.items():
        for node in _top_level_imports(tree.body):
            if isinstance(node, ast.Import):
                edges[name] |= {a.name for a in node.names if a.name in known}
            elif node.module and node.level == 0 and node.module.split(".")[0] in FLOORS:
                submodules = {f"{node.module}.{a.name}" for a in node.names} & known.keys()
                edges[name] |= submodules
                if node.module in known and len(submodules) < len(node.names):
                    edges[name].add(node.module)
                    by_name.append((name, node.lineno, node.module))

    # Tarjan's strongly connected components.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    component: dict[str, int] = {}

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            while True:
                w = stack.pop()
                component[w] = index[v]
                if w == v:
                    break

    for v in sorted(edges):
        if v not in index:
            visit(v)
    sizes: dict[int, int] = {}
    for c in component.values():
        sizes[c] = sizes.get(c, 0) + 1
    wrong = [
        f"{importer}:{line} takes names from {module}, which imports it back (import the module)"
        for importer, line, module in by_name
        if component[importer] == component[module] and sizes[component[importer]] > 1
    ]
    assert not wrong, "\n".join(wrong)
