"""The import graph of core/ and plugins/, read statically (ast), has the agreed shape:

- no cycle among modules: every import counts, at module level or inside a function (a lazy
  import still ties the two modules together), except those under ``if TYPE_CHECKING:``;
- the serving core (``dserve``) imports no plugin and not the operations wing (``dserve_ops``);
- a plugin (``dserve_llada``, ..., and the operations wing) imports no other plugin;
- no module imports another module's private name (``from m import _name``) or a private
  module (``m._sub``) from outside the package that holds it.

See docs/architecture.md for the layers.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE = "dserve"
OPERATIONS = "dserve_ops"


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported internal module
    names: tuple[str, ...]  # names taken from it (`from target import a, b`)
    line: int


def _package_roots() -> list[Path]:
    """Directories that hold top-level packages: core/ and each plugin distribution."""
    return [ROOT / "core", *sorted(p for p in (ROOT / "plugins").iterdir() if (p / "pyproject.toml").exists())]


def _modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for root in _package_roots():
        for package in sorted(p for p in root.iterdir() if (p / "__init__.py").exists()):
            for path in sorted(package.rglob("*.py")):
                parts = list(path.relative_to(root).with_suffix("").parts)
                if parts[-1] == "__init__":
                    parts.pop()
                modules[".".join(parts)] = path
    return modules


def _is_package(module: str, modules: dict[str, Path]) -> bool:
    return modules[module].name == "__init__.py"


def _under_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        parent = parents[node]
        if isinstance(parent, ast.If) and node in parent.body:
            test = parent.test
            if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
            ):
                return True
        node = parent
    return False


def _imports(module: str, modules: dict[str, Path]) -> list[Import]:
    tree = ast.parse(modules[module].read_text(), filename=str(modules[module]))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = module if _is_package(module, modules) else module.rpartition(".")[0]
    found: list[Import] = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or _under_type_checking(node, parents):
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    found.append(Import(module, alias.name, (), node.lineno))
            continue
        if node.level:  # relative: from . import x / from ..a import b
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            origin = ".".join(base + ([node.module] if node.module else []))
        else:
            origin = node.module or ""
        plain: list[str] = []
        for alias in node.names:
            submodule = f"{origin}.{alias.name}"
            if submodule in modules:  # from package import submodule
                found.append(Import(module, submodule, (), node.lineno))
            else:
                plain.append(alias.name)
        if plain and origin in modules:
            found.append(Import(module, origin, tuple(plain), node.lineno))
    return found


@pytest.fixture(scope="module")
def graph() -> tuple[dict[str, Path], list[Import]]:
    modules = _modules()
    return modules, [imp for module in modules for imp in _imports(module, modules) if imp.target != module]


def _top(module: str) -> str:
    return module.split(".")[0]


def _where(imp: Import, modules: dict[str, Path]) -> str:
    return f"{modules[imp.source].relative_to(ROOT)}:{imp.line}: {imp.source} -> {imp.target}"


def _cycles(modules: dict[str, Path], imports: list[Import]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for imp in imports:
        edges[imp.source].add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in modules:
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def test_the_graph_covers_core_operations_and_every_plugin(graph):
    modules, imports = graph
    tops = {_top(m) for m in modules}
    assert {
        CORE,
        OPERATIONS,
        "dserve_llada",
        "dserve_dream",
        "dserve_nemotron",
        "dserve_llada2",
        "dserve_fastdllm",
        "dserve_dinfer",
    } <= tops
    assert {"dserve.cli", "dserve.server", "dserve_ops.front.app", "dserve_ops.plugin"} <= set(modules)
    # the reader sees imports inside functions too (the CLI imports lazily)
    assert any(imp.source == "dserve.cli" and imp.target == "dserve.server" for imp in imports)


def test_no_import_cycle(graph):
    modules, imports = graph
    cycles = _cycles(modules, imports)
    detail = [
        [_where(imp, modules) for imp in imports if imp.source in component and imp.target in component] for component in cycles
    ]
    assert not cycles, "import cycles:\n" + "\n\n".join("\n".join(lines) for lines in detail)


def test_serving_core_imports_no_plugin_and_not_the_operations_wing(graph):
    modules, imports = graph
    bad = [_where(imp, modules) for imp in imports if _top(imp.source) == CORE and _top(imp.target) != CORE]
    assert not bad, "the serving core imports outside itself:\n" + "\n".join(bad)


def test_plugins_import_no_other_plugin(graph):
    modules, imports = graph
    bad = [
        _where(imp, modules) for imp in imports if _top(imp.source) != CORE and _top(imp.target) not in (CORE, _top(imp.source))
    ]
    assert not bad, "a plugin imports another plugin:\n" + "\n".join(bad)


def test_no_private_name_crosses_modules(graph):
    modules, imports = graph
    bad = []
    for imp in imports:
        private_names = [n for n in imp.names if n.startswith("_") and not n.startswith("__")]
        if private_names:
            bad.append(f"{_where(imp, modules)} imports {', '.join(private_names)}")
        *package, last = imp.target.split(".")
        holder = ".".join(package)
        if (
            last.startswith("_")
            and not last.startswith("__")
            and not (imp.source == holder or imp.source.startswith(holder + "."))
        ):
            bad.append(f"{_where(imp, modules)}: a private module from outside its package")
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def test_the_checks_catch_what_they_look_for():
    """The graph logic itself: a made-up cycle, a relative import and a TYPE_CHECKING import."""
    modules = {"a": Path("a/__init__.py"), "a.x": Path("a/x.py"), "a.y": Path("a/y.py"), "b": Path("b/__init__.py")}
    imports = [Import("a.x", "a.y", (), 1), Import("a.y", "b", (), 1), Import("b", "a.x", (), 1)]
    assert _cycles(modules, imports) == [["a.x", "a.y", "b"]]
    assert _cycles(modules, imports[:2]) == []


def test_relative_and_type_checking_imports_are_read(tmp_path, monkeypatch):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "one.py").write_text("from . import two\nfrom .two import _secret\n")
    (package / "two.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import one\ndef later():\n    import pkg.one\n"
    )
    modules = {"pkg": package / "__init__.py", "pkg.one": package / "one.py", "pkg.two": package / "two.py"}
    one = _imports("pkg.one", modules)
    assert {(i.target, i.names) for i in one} == {("pkg.two", ()), ("pkg.two", ("_secret",))}
    assert [(i.target, i.line) for i in _imports("pkg.two", modules)] == [("pkg.one", 5)]  # not line 3
