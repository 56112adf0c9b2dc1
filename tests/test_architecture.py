"""Layering rules of the code base, checked on the source files with ``ast``.

- the framework (``vision_pipe/``) never imports the built-in plugins;
- the built-in plugins (``plugins/``, importable as ``vision_pipe_plugins``) use
  only the public API of ``vision_pipe`` (``from vision_pipe import X`` with X in
  ``vision_pipe.__all__``), exactly as a third-party plugin would;
- every built-in plugin is registered through the ``vision_pipe.plugins``
  entry-point group declared in ``pyproject.toml`` — and nothing else;
- inside the framework, what modules import when they are imported forms no
  cycle, the foundation modules (errors, contracts, IO, the sample contract)
  import nothing above them, only the CLI imports the ``Pipeline`` façade, and
  core modules import each other by module, never through the package's
  public ``__init__``;
- every module opens with a docstring.

The checkers are pure functions over source text; ``test_checkers_*`` feed them
known-bad code so that a checker that silently finds nothing is itself caught.
"""

from __future__ import annotations

import ast
import importlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomllib

import vision_pipe
from vision_pipe.plugins import DISABLE_ENV, ENTRY_POINT_GROUP, PluginManager
from vision_pipe.stages import StageInfo

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORK_DIR = ROOT / "vision_pipe"
PLUGINS_DIR = ROOT / "plugins"
PLUGINS_PACKAGE = "vision_pipe_plugins"
#: Top-level names under which the built-in plugins could be imported.
PLUGIN_TOP_LEVEL = {PLUGINS_PACKAGE, "plugins"}
IMPORT_FUNCTIONS = {"import_module", "__import__"}


def _py_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*.py") if "__pycache__" not in p.parts)


def _rel(path: Path) -> str:
    try:
        return path.relative_to(ROOT).as_posix()
    except ValueError:
        return path.as_posix()


def _imports(tree: ast.AST) -> Iterator[tuple[int, str, list[str], int]]:
    """Every import in ``tree`` (also inside functions and ``if TYPE_CHECKING:``).

    Yields ``(lineno, module, names, level)``: ``import a.b`` gives
    ``("a.b", [], 0)``; ``from a import x, y`` gives ``("a", ["x", "y"], 0)``;
    ``from .m import x`` gives ``("m", ["x"], 1)``; ``importlib.import_module("a.b")``
    and ``__import__("a.b")`` with a literal argument give ``("a.b", [], 0)``.
    """
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, [], 0
        elif isinstance(node, ast.ImportFrom):
            yield node.lineno, node.module or "", [a.name for a in node.names], node.level
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            arg = node.args[0]
            if name in IMPORT_FUNCTIONS and isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                if not arg.value.startswith("."):
                    yield node.lineno, arg.value, [], 0


def framework_offenders(path: Path, source: str) -> list[str]:
    """Imports of the built-in plugins from a framework module."""
    offenders = []
    for lineno, module, _names, level in _imports(ast.parse(source, filename=str(path))):
        if level == 0 and module.split(".")[0] in PLUGIN_TOP_LEVEL:
            offenders.append(f"{_rel(path)}:{lineno} imports {module}")
    return offenders


def plugin_offenders(path: Path, source: str, public: set[str]) -> list[str]:
    """Imports from a plugin module that reach past ``vision_pipe``'s public API
    (or import the plugins under the bare name ``plugins``)."""
    offenders = []
    for lineno, module, names, level in _imports(ast.parse(source, filename=str(path))):
        if level > 0:
            continue  # relative imports inside plugins/ are fine
        where = f"{_rel(path)}:{lineno}"
        top = module.split(".")[0]
        if module.startswith("vision_pipe."):
            offenders.append(f"{where} imports the private module {module}; use `from vision_pipe import ...`")
        elif module == "vision_pipe":
            private = [n for n in names if n != "*" and n not in public]
            if private:
                offenders.append(f"{where} imports {private} from vision_pipe, not in vision_pipe.__all__")
        elif top == "plugins":
            offenders.append(f"{where} imports the bare package {module}; use {PLUGINS_PACKAGE} or a relative import")
    return offenders


def _top_level_names(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return [(a.asname or a.name).split(".")[0] for a in node.names]
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, (ast.AnnAssign, ast.AugAssign)) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def defines_stages_hook(source: str) -> bool:
    """Whether a module has a top-level ``vision_pipe_stages`` (defined, assigned or imported)."""
    return any("vision_pipe_stages" in _top_level_names(node) for node in ast.parse(source).body)


def module_name(path: Path) -> str:
    """``plugins/loading/x.py`` → ``vision_pipe_plugins.loading.x``."""
    parts = list(path.relative_to(PLUGINS_DIR).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([PLUGINS_PACKAGE, *parts])


def _pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def declared_entry_points() -> dict[str, str]:
    return dict(_pyproject().get("project", {}).get("entry-points", {}).get(ENTRY_POINT_GROUP, {}))


def _disabled() -> set[str]:
    return {s.strip() for s in os.environ.get(DISABLE_ENV, "").split(",") if s.strip()}


# ----------------------------------------------------------------------------
# The rules
# ----------------------------------------------------------------------------


def test_sources_are_found() -> None:
    framework = [_rel(p) for p in _py_files(FRAMEWORK_DIR)]
    plugins = [_rel(p) for p in _py_files(PLUGINS_DIR)]
    assert "vision_pipe/__init__.py" in framework and "vision_pipe/data.py" in framework, framework
    assert "plugins/__init__.py" in plugins and len(plugins) > 5, plugins


def test_framework_does_not_import_plugins() -> None:
    offenders = [o for p in _py_files(FRAMEWORK_DIR) for o in framework_offenders(p, p.read_text("utf-8"))]
    assert offenders == [], "vision_pipe/ must not depend on the built-in plugins:\n" + "\n".join(offenders)


def test_plugins_use_only_the_public_api() -> None:
    public = set(vision_pipe.__all__)
    offenders = [o for p in _py_files(PLUGINS_DIR) for o in plugin_offenders(p, p.read_text("utf-8"), public)]
    assert offenders == [], "plugins/ must import only vision_pipe's public API:\n" + "\n".join(offenders)


def test_public_api_names_exist() -> None:
    missing = [name for name in vision_pipe.__all__ if not hasattr(vision_pipe, name)]
    assert missing == [], f"vision_pipe.__all__ names that do not resolve: {missing}"


def test_entry_points_are_declared() -> None:
    declared = declared_entry_points()
    assert declared, f"pyproject.toml declares no [project.entry-points.\"{ENTRY_POINT_GROUP}\"]"
    bad = {n: v for n, v in declared.items() if ":" in v or not v.startswith(PLUGINS_PACKAGE + ".")}
    assert bad == {}, f"built-in entry points must name a module under {PLUGINS_PACKAGE} (no ':attr'): {bad}"


@pytest.mark.parametrize("name", sorted(declared_entry_points()))
def test_entry_point_module_provides_stages(name: str) -> None:
    value = declared_entry_points()[name]
    path = PLUGINS_DIR.joinpath(*value.split(".")[1:]).with_suffix(".py")
    if not path.is_file() and name in _disabled():
        pytest.skip(f"entry point {name} -> {value}: {_rel(path)} does not exist yet ({DISABLE_ENV}={name})")
    assert path.is_file(), f"entry point {name} -> {value}: no file {_rel(path)}"
    module = importlib.import_module(value)
    assert Path(module.__file__).resolve() == path.resolve(), (
        f"entry point {name} -> {value} imports {module.__file__}, not {_rel(path)}"
    )
    hook = getattr(module, "vision_pipe_stages", None)
    assert callable(hook), f"entry point {name} -> {value} has no vision_pipe_stages hook"
    factories = hook()
    assert isinstance(factories, (list, tuple)) and len(factories) > 0, (
        f"{value}.vision_pipe_stages() returned {factories!r}; expected a non-empty list of factories"
    )
    unmarked = [f for f in factories if not isinstance(getattr(f, "__vision_pipe_stage__", None), StageInfo)]
    assert unmarked == [], f"{value}.vision_pipe_stages() returned factories not marked with @stage: {unmarked}"
    # The real registration path: the hookimpl marker is found and every factory validates.
    manager = PluginManager(autoload=False)
    manager.register(module, name=name)
    registered = manager.plugins[name].stages
    expected = [(f.__vision_pipe_stage__.kind, f.__vision_pipe_stage__.name) for f in factories]
    assert registered == expected, (
        f"{value}: registering the plugin gave stages {registered}, its hook returns {expected} "
        "(is vision_pipe_stages decorated with @hookimpl?)"
    )


def test_every_builtin_plugin_module_is_an_entry_point() -> None:
    declared = set(declared_entry_points().values())
    plugin_modules = [
        module_name(p)
        for p in _py_files(PLUGINS_DIR)
        if p.name != "__init__.py" and defines_stages_hook(p.read_text("utf-8"))
    ]
    assert len(plugin_modules) >= 5, f"found too few plugin modules: {plugin_modules}"
    undeclared = sorted(set(plugin_modules) - declared)
    assert undeclared == [], (
        f"built-in plugin modules not declared as {ENTRY_POINT_GROUP} entry points in pyproject.toml "
        f"(their stages would be registered by a side door, or not at all): {undeclared}"
    )


def test_packages_init_files_define_no_stages() -> None:
    """An ``__init__.py`` is not an entry point: a stages hook there would be a side door."""
    offenders = [_rel(p) for p in PLUGINS_DIR.rglob("__init__.py") if defines_stages_hook(p.read_text("utf-8"))]
    assert offenders == [], f"__init__.py files defining vision_pipe_stages: {offenders}"


def test_every_package_is_listed_for_setuptools() -> None:
    """A package missing from ``[tool.setuptools] packages`` works in an editable
    install but is absent from the wheel."""
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    framework = [core_module_name(p) for p in FRAMEWORK_DIR.rglob("__init__.py") if "__pycache__" not in p.parts]
    plugins = [module_name(p) for p in PLUGINS_DIR.rglob("__init__.py") if "__pycache__" not in p.parts]
    assert {"vision_pipe", "vision_pipe.tasks", "vision_pipe.testing"} <= set(framework), framework
    missing = sorted(set(framework + plugins) - listed)
    assert missing == [], f"packages not listed in [tool.setuptools] packages of pyproject.toml: {missing}"


# ----------------------------------------------------------------------------
# Layers inside the framework
# ----------------------------------------------------------------------------

#: Modules every other one may build on; they import only each other (and not all of them).
FOUNDATION = {
    "vision_pipe.errors",
    "vision_pipe.io",
    "vision_pipe.samples",
    "vision_pipe.classes",
    "vision_pipe.stages",
    "vision_pipe.results",
    "vision_pipe.hookspecs",
}
#: Who may import the façade at import time (the package's __init__ imports it lazily).
FACADE = "vision_pipe.pipeline"
FACADE_USERS = {"vision_pipe.cli"}


def core_module_name(path: Path) -> str:
    """``vision_pipe/tasks/detection.py`` → ``vision_pipe.tasks.detection``."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.stmt) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _import_time_statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements run when the module is imported: the top level and its try/if blocks
    (not function bodies, not ``if TYPE_CHECKING:``)."""
    for node in body:
        if _is_type_checking(node):
            continue
        yield node
        if isinstance(node, (ast.If, ast.Try)):
            yield from _import_time_statements(node.body)
            yield from _import_time_statements(node.orelse)
            for handler in getattr(node, "handlers", []):
                yield from _import_time_statements(handler.body)


def import_time_edges(module: str, source: str, modules: set[str]) -> tuple[set[str], list[str]]:
    """The framework modules ``module`` imports when it is imported, and its imports of
    ``vision_pipe``'s public namespace (``from vision_pipe import X`` with X not a module)."""
    package = module if module in {m for m in modules if any(o.startswith(m + ".") for o in modules)} else module.rpartition(".")[0]
    edges: set[str] = set()
    through_init: list[str] = []
    for node in _import_time_statements(ast.parse(source).body):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
            names: list[str] = []
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base]
            names = [a.name for a in node.names]
        else:
            continue
        for target in targets:
            if target not in modules and target != "vision_pipe":
                continue
            submodules = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
            edges.update(submodules)
            if target == "vision_pipe" and len(submodules) < len(names):
                through_init.append(f"line {node.lineno}: from vision_pipe import {', '.join(names)}")
            elif target != "vision_pipe" and len(submodules) < max(1, len(names)):
                edges.add(target)
    edges.discard(module)
    return edges, through_init


def core_graph() -> tuple[dict[str, set[str]], dict[str, list[str]]]:
    files = {core_module_name(p): p for p in _py_files(FRAMEWORK_DIR)}
    modules = set(files)
    graph: dict[str, set[str]] = {}
    through_init: dict[str, list[str]] = {}
    for module, path in files.items():
        edges, via_init = import_time_edges(module, path.read_text("utf-8"), modules)
        graph[module] = edges - {"vision_pipe"}
        if via_init and module != "vision_pipe":
            through_init[module] = via_init
    return graph, through_init


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as a path (first = last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_core_imports_form_no_cycle() -> None:
    graph, _ = core_graph()
    assert len(graph) > 15, sorted(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import-time cycle between framework modules: " + " -> ".join(cycle or [])


def test_foundation_modules_import_only_the_foundation() -> None:
    graph, _ = core_graph()
    offenders = {m: sorted(graph[m] - FOUNDATION) for m in FOUNDATION if graph.get(m, set()) - FOUNDATION}
    assert offenders == {}, f"foundation modules importing higher layers: {offenders}"


def test_only_the_cli_imports_the_facade() -> None:
    graph, _ = core_graph()
    users = sorted(m for m, edges in graph.items() if FACADE in edges and m not in FACADE_USERS)
    assert users == [], f"modules importing {FACADE} at import time (the façade is the top layer): {users}"


def test_core_modules_do_not_import_through_the_public_init() -> None:
    _, through_init = core_graph()
    assert through_init == {}, (
        "framework modules must import the module that defines a name (`from vision_pipe.io import x`), "
        f"not the package namespace: {through_init}"
    )


def test_every_module_opens_with_a_docstring() -> None:
    missing = [
        _rel(p)
        for p in [*_py_files(FRAMEWORK_DIR), *_py_files(PLUGINS_DIR)]
        if p.read_text("utf-8").strip() and ast.get_docstring(ast.parse(p.read_text("utf-8"))) is None
    ]
    assert missing == [], f"modules without a docstring saying what they own: {missing}"


def test_checkers_find_import_time_edges_and_cycles() -> None:
    modules = {"vision_pipe", "vision_pipe.a", "vision_pipe.b", "vision_pipe.tasks", "vision_pipe.tasks.c"}
    source = """
from vision_pipe.b import x
from vision_pipe import tasks
from vision_pipe import Pipeline
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from vision_pipe.tasks import c
try:
    import vision_pipe.tasks.c
except ImportError:
    pass
def f():
    from vision_pipe.a import y
"""
    edges, via_init = import_time_edges("vision_pipe.a", source, modules)
    assert edges == {"vision_pipe.b", "vision_pipe.tasks", "vision_pipe.tasks.c"}, edges
    assert via_init == ["line 4: from vision_pipe import Pipeline"], via_init
    rel, _ = import_time_edges("vision_pipe.tasks.c", "from .base import T\nfrom ..io import z\n", modules | {"vision_pipe.tasks.base", "vision_pipe.io"})
    assert rel == {"vision_pipe.tasks.base", "vision_pipe.io"}, rel
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


# ----------------------------------------------------------------------------
# The checkers themselves catch violations
# ----------------------------------------------------------------------------


def test_checkers_detect_framework_violations() -> None:
    source = """
import os
import vision_pipe_plugins.loading.image_folder
from plugins.backbone import vgg
from vision_pipe.plugins import PluginManager   # vision_pipe's own plugins module: fine
from . import plugins                            # relative: vision_pipe.plugins, fine
def f():
    from vision_pipe_plugins import head
    import importlib
    importlib.import_module("vision_pipe_plugins.head.classification")
"""
    found = framework_offenders(FRAMEWORK_DIR / "bad.py", source)
    assert [o.split(" ", 1)[0] for o in found] == [
        "vision_pipe/bad.py:3",
        "vision_pipe/bad.py:4",
        "vision_pipe/bad.py:8",
        "vision_pipe/bad.py:10",
    ], found


def test_checkers_detect_plugin_violations() -> None:
    source = """
import vision_pipe
import vision_pipe.data
from vision_pipe import Loader, stage, hookimpl
from vision_pipe import StageInfo
from vision_pipe.stages import Loader
from vision_pipe import *
from .common import helper
from ..loading import synthetic_shapes
import plugins.backbone.common
from typing import TYPE_CHECKING
if TYPE_CHECKING:
    from vision_pipe.pipeline import Pipeline
"""
    found = plugin_offenders(PLUGINS_DIR / "x" / "bad.py", source, set(vision_pipe.__all__))
    lines = [o.split(" ", 1)[0] for o in found]
    assert lines == [f"plugins/x/bad.py:{n}" for n in (3, 5, 6, 10, 13)], found
    assert "StageInfo" in found[1], found


def test_checkers_detect_stage_hooks() -> None:
    assert defines_stages_hook("@hookimpl\ndef vision_pipe_stages():\n    return []\n")
    assert not defines_stages_hook("def helper():\n    def vision_pipe_stages(): ...\n")
    assert defines_stages_hook("from .x import vision_pipe_stages\n")  # a re-export is a hook too
    assert defines_stages_hook("from .x import f as vision_pipe_stages\n")
    assert defines_stages_hook("vision_pipe_stages = hookimpl(f)\n")
    assert not defines_stages_hook("from .x import vision_pipe_stages as _stages\n")
    assert module_name(PLUGINS_DIR / "loading" / "x.py") == "vision_pipe_plugins.loading.x"
    assert module_name(PLUGINS_DIR / "loading" / "__init__.py") == "vision_pipe_plugins.loading"
