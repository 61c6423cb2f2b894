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
