"""The Apply model widget asks before it runs a foreign package's TorchScript code (issue 13)."""

from __future__ import annotations

import hashlib
import io
import zipfile

import numpy as np
import pytest
import torch
import yaml
from qtpy.QtWidgets import QMessageBox

PLUGIN = "napari-selfdenoise"
WAIT_MS = 180_000


class Doubler(torch.nn.Module):
    def forward(self, x):
        return x * 2.0 + 1.0


@pytest.fixture
def package(tmp_path):
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(Doubler()), buffer)
    weights = buffer.getvalue()
    space = lambda a: {"type": "space", "id": a, "size": {"min": 16, "step": 8}}
    ref = lambda a: {"type": "space", "id": a, "size": {"tensor_id": "raw", "axis_id": a}}
    rdf = {"format_version": "0.5.4", "type": "model", "name": "Stranger model", "authors": [{"name": "Mallory"}],
           "inputs": [{"id": "raw", "axes": [{"type": "batch"}, space("y"), space("x")]}],
           "outputs": [{"id": "out", "axes": [{"type": "batch"}, ref("y"), ref("x")]}],
           "weights": {"torchscript": {"source": "model.pt", "sha256": hashlib.sha256(weights).hexdigest()}}}
    path = tmp_path / "stranger.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("rdf.yaml", yaml.safe_dump(rdf))
        archive.writestr("model.pt", weights)
    return path


@pytest.fixture
def viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((32, 32), dtype=np.float32), name="cells")
    return viewer


def _answer(monkeypatch, button):
    asked = []

    def question(parent, title, text, *args, **kwargs):
        asked.append(text)
        return button

    monkeypatch.setattr(QMessageBox, "question", staticmethod(question))
    return asked


def test_no_means_nothing_is_loaded(viewer, package, monkeypatch, errors):
    asked = _answer(monkeypatch, QMessageBox.StandardButton.No)
    _, apply = viewer.window.add_plugin_dock_widget(PLUGIN, "Apply model")
    assert not apply.load_model(package)
    assert apply.denoiser is None and not apply.apply_button.isEnabled()
    assert len(asked) == 1
    assert "program written by the package's author" in asked[0]
    assert "read, write or send your files" in asked[0] and "trust Mallory" in asked[0]
    assert any("not trusted" in message for message in errors())


def test_yes_loads_it_and_it_runs_in_a_child(viewer, package, monkeypatch, qtbot, errors):
    asked = _answer(monkeypatch, QMessageBox.StandardButton.Yes)
    _, apply = viewer.window.add_plugin_dock_widget(PLUGIN, "Apply model")
    assert apply.load_model(package)
    assert len(asked) == 1 and apply.denoiser is not None and apply.denoiser.network is None
    assert "Stranger model" in apply.model_info.text()
    apply.image_picker.setCurrentText("cells")
    apply.start()
    qtbot.waitUntil(lambda: apply.worker is None, timeout=WAIT_MS)
    assert errors() == []
    result = [layer for layer in viewer.layers if layer.name.startswith("cells denoised")]
    assert len(result) == 1
    np.testing.assert_allclose(result[0].data, viewer.layers["cells"].data * 2 + 1, atol=1e-6)
