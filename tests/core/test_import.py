"""The engine never imports Qt or napari, and importing the package alone stays light (no torch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import napari_selfdenoise

GUI_MODULES = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "superqt")

_PROBE = """
import importlib, json, pkgutil, sys
for name in {imports!r}:
    importlib.import_module(name)
if {walk_core!r}:
    import napari_selfdenoise.core as core
    for info in pkgutil.walk_packages(core.__path__, core.__name__ + "."):
        importlib.import_module(info.name)
print(json.dumps(sorted(sys.modules)))
"""


def _modules_after(imports, walk_core=False) -> set[str]:
    """The ``sys.modules`` of a fresh interpreter after importing ``imports``."""
    env = dict(os.environ)
    src = str(Path(napari_selfdenoise.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("QT_API", None)
    result = subprocess.run([sys.executable, "-c", _PROBE.format(imports=list(imports), walk_core=walk_core)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def _gui(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in GUI_MODULES)


def test_engine_imports_no_gui():
    modules = _modules_after(["napari_selfdenoise", "napari_selfdenoise.core.denoiser"], walk_core=True)
    # The walk really imported the engine (and with it torch).
    assert {"napari_selfdenoise.core.denoiser", "napari_selfdenoise.core.training.trainer",
            "napari_selfdenoise.core.methods.n2v", "torch"} <= modules
    assert _gui(modules) == []


def test_package_import_is_light():
    modules = _modules_after(["napari_selfdenoise"])
    assert "napari_selfdenoise" in modules
    assert "torch" not in modules
    assert _gui(modules) == []


def test_public_names_resolve_lazily():
    modules = _modules_after(["napari_selfdenoise"])
    assert "napari_selfdenoise.core.denoiser" not in modules
    from napari_selfdenoise import Denoiser, TrainConfig
    from napari_selfdenoise.core.config import TrainConfig as Config
    from napari_selfdenoise.core.denoiser import Denoiser as Facade

    assert Denoiser is Facade and TrainConfig is Config


def _module_imports(root: Path) -> dict[str, set[str]]:
    """{module: the package's modules it imports}, imports inside functions included; those under
    ``if TYPE_CHECKING:`` are left out (they never run)."""
    import ast

    def name_of(path: Path) -> tuple[str, list[str]]:
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        package = parts[:-1]
        if parts[-1] == "__init__":
            parts, package = parts[:-1], parts[:-1]
        return ".".join(parts), package

    def nodes(node):
        yield node
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            return
        for child in ast.iter_child_nodes(node):
            yield from nodes(child)

    modules = {name_of(p)[0]: p for p in root.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package, found = name_of(path)[1], set()
        for node in nodes(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = package[:len(package) - node.level + 1] if node.level else []
                base = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def _a_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (a list of modules, the first repeated at the end), or None."""
    state, path = {}, []

    def visit(module):
        state[module] = "open"
        path.append(module)
        for other in sorted(graph[module]):
            if state.get(other) == "open":
                return path[path.index(other):] + [other]
            if other not in state and (cycle := visit(other)):
                return cycle
        state[module] = "done"
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _a_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _a_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle_anywhere():
    """Issue 17: no module imports one that imports it back, even from inside a function (imports are
    deferred only to keep ``import napari_selfdenoise`` and the CLI's start-up free of torch)."""
    graph = _module_imports(Path(napari_selfdenoise.__file__).parent)
    assert {"napari_selfdenoise.core.denoiser", "napari_selfdenoise.core.training.auto"} <= set(graph)
    assert "napari_selfdenoise.core.training.auto" in graph["napari_selfdenoise.core.denoiser"]
    assert _a_cycle(graph) is None, " -> ".join(_a_cycle(graph))


def test_the_base_packages_never_import_the_layers_above():
    """core/'s layout (ARCHITECTURE.md): data/ io/ nn/ methods/ trust/ are the base; training/,
    predict/, bmz/, jobs.py and the Denoiser build on them, never the other way round."""
    core = "napari_selfdenoise.core."
    base, above = ("data", "io", "nn", "methods", "trust"), ("training", "predict", "bmz", "jobs", "denoiser")
    graph = _module_imports(Path(napari_selfdenoise.__file__).parent)

    def part(module):
        return module[len(core):].split(".")[0] if module.startswith(core) else None

    assert any(part(m) == "methods" for m in graph) and any(part(m) == "predict" for m in graph)
    wrong = {m: sorted(d for d in deps if part(d) in above) for m, deps in graph.items() if part(m) in base}
    assert not {m: d for m, d in wrong.items() if d}


def test_no_module_imports_a_private_name_from_another_package():
    """Issue 17: a rule used by two packages is public in its one home (``io.ome``, ``predict.predictor``),
    not a ``_name`` borrowed across packages. Within one package (``bmz._Package``) it may be shared."""
    import ast

    root = Path(napari_selfdenoise.__file__).parent
    borrowed = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level != 1:  # level 1: the same package
                borrowed += [f"{path.relative_to(root)}: {node.module}.{a.name}" for a in node.names
                             if a.name.startswith("_") and not a.name.startswith("__")]
    assert borrowed == []
