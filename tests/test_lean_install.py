"""The library and the command line work where napari, Qt and the GUI stack are not installed.

napari is not a base dependency (pyproject.toml): a cluster worker, a notebook or the CLI must not need it.
A fresh interpreter is given an import hook that makes every GUI package unimportable, as in a venv
without them, and then runs the CLI's main jobs end to end on a tiny image.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile

import napari_selfdenoise

GUI_PACKAGES = ("napari", "npe2", "magicgui", "vispy", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6",
                "superqt", "pyqtgraph")

_WITHOUT_GUI = """
import importlib.abc, sys

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {packages!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (hidden by the test)")
        return None

sys.meta_path.insert(0, NotInstalled())
from napari_selfdenoise.cli import main
code = main(sys.argv[1:])
leaked = sorted(m for m in sys.modules if m.split(".")[0] in {packages!r})
assert not leaked, leaked
sys.exit(code)
"""


def _cli_without_gui(*args, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    src = str(Path(napari_selfdenoise.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    script = _WITHOUT_GUI.format(packages=GUI_PACKAGES)
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def test_cli_runs_without_napari_or_qt(tmp_path):
    rng = np.random.default_rng(0)
    noisy = (rng.normal(100, 10, (48, 48))).astype(np.float32)
    tifffile.imwrite(tmp_path / "noisy.tif", noisy)
    model = tmp_path / "m.sdmodel"
    runs = [
        ("train", "noisy.tif", "--method", "n2s", "--axes", "YX", "--steps", "3", "--patch", "32",
         "--batch", "2", "--features", "8", "-q", "--out", model.name),
        ("predict", model.name, "noisy.tif", "-q", "--out", "denoised.ome.tif"),
        ("calibrate", "noisy.tif", "--axes", "YX", "-q", "--out", "classic.ome.tif"),
        ("info", model.name),
    ]
    for args in runs:
        result = _cli_without_gui(*args, cwd=tmp_path)
        assert result.returncode == 0, (args, result.stderr[-2000:])
    assert model.is_file()
    assert tifffile.imread(tmp_path / "denoised.ome.tif").shape == noisy.shape
    assert tifffile.imread(tmp_path / "classic.ome.tif").shape == noisy.shape
