"""bioimage.io in the dock widgets: the "Export to bioimage.io..." dialog, applying packages (ours and
foreign), and "Start from model..." fine-tuning in the Train widget."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import yaml

from napari_selfdenoise.core import bmz
from napari_selfdenoise.core.data.synthetic import add_noise, fluorescence_image
from napari_selfdenoise.core.denoiser import Denoiser

PLUGIN = "napari-selfdenoise"
WAIT_MS = 180_000
TINY = dict(steps=3, features=4, depth=1, patch=32, batch=2, steps_per_epoch=3, device="cpu")


@pytest.fixture
def noisy():
    return add_noise(fluorescence_image((96, 96), seed=4), "gaussian", sigma=0.1, seed=4)


@pytest.fixture
def viewer(make_napari_viewer, noisy):
    viewer = make_napari_viewer()
    viewer.add_image(noisy, name="cells")
    return viewer


@pytest.fixture
def model_file(tmp_path, noisy):
    return Denoiser("n2v2", "YX", **TINY).fit(noisy).save(tmp_path / "cells.sdmodel")


def test_export_dialog_defaults_and_export(viewer, model_file, tmp_path, qtbot):
    from napari_selfdenoise._qt.export_dialog import ExportDialog

    _, apply = viewer.window.add_plugin_dock_widget(PLUGIN, "Apply model")
    assert not apply.export_button.isEnabled()  # nothing loaded yet
    assert apply.load_model(model_file)
    assert apply.export_button.isEnabled()
    dialog = ExportDialog(apply.denoiser, str(tmp_path / "cells.zip"))
    qtbot.addWidget(dialog)
    defaults = dialog.metadata()
    assert "N2V2" in defaults["name"] and defaults["license"] == "CC-BY-4.0"
    assert "denoising" in defaults["tags"] and defaults["authors"] and defaults["description"]
    # a mistake keeps the dialog open, says why and writes nothing
    dialog.name.setText("bad/name")
    assert dialog.export() is None and "may only hold" in dialog.message.text()
    assert not (tmp_path / "cells.zip").exists()
    dialog.name.setText("Cells denoiser")
    dialog.authors.setText("Ada Lovelace <ada@example.org>; Charles Babbage")
    dialog.license.setCurrentText("MIT")
    dialog.tags.setText("cells, nuclei")
    written = dialog.export()
    assert written == tmp_path / "cells.zip" and dialog.result() == dialog.DialogCode.Accepted
    with zipfile.ZipFile(written) as archive:
        rdf = yaml.safe_load(archive.read("rdf.yaml"))
    assert rdf["name"] == "Cells denoiser" and rdf["license"] == "MIT" and rdf["tags"] == ["cells", "nuclei"]
    assert [a["name"] for a in rdf["authors"]] == ["Ada Lovelace", "Charles Babbage"]


def test_train_widget_exports_and_the_package_applies(viewer, qtbot, tmp_path, noisy, errors):
    _, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train & Denoise")
    train.image_picker.setCurrentText("cells")
    train.method_picker.setCurrentIndex(train.method_picker.findData("n2v2"))
    for spin, value in ((train.steps, 3), (train.features, 4), (train.depth, 1), (train.patch, 32),
                        (train.batch, 2)):
        spin.setValue(value)
    assert not train.export_button.isEnabled()
    train.start()
    qtbot.waitUntil(lambda: train.worker is None, timeout=WAIT_MS)
    assert train.export_button.isEnabled()
    package = train.export_bioimageio(tmp_path / "cells.zip", {"name": "Cells from napari"})
    assert package is not None and bmz.is_bmz_package(package)

    _, apply = viewer.window.add_plugin_dock_widget(PLUGIN, "Apply model")
    assert apply.load_model(package)
    assert "N2V2" in apply.model_info.text()
    apply.image_picker.setCurrentText("cells")
    viewer.layers.remove(next(layer for layer in viewer.layers  # the Train widget's result
                              if layer.name.startswith("cells denoised (n2v2, 3 steps, ")))
    apply.start()
    qtbot.waitUntil(lambda: apply.worker is None, timeout=WAIT_MS)
    assert errors() == []
    np.testing.assert_allclose(viewer.layers["cells denoised (n2v2)"].data, train.denoiser.predict(noisy),
                               atol=1e-5)


def test_apply_widget_runs_a_foreign_package(viewer, qtbot, model_file, tmp_path, noisy, errors):
    ours = bmz.export_bmz(Denoiser.load(model_file), tmp_path / "ours.zip")
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(ours) as old, zipfile.ZipFile(foreign, "w") as new:
        rdf = yaml.safe_load(old.read("rdf.yaml"))
        rdf["attachments"], rdf["config"], rdf["name"] = [], {}, "Someone else"
        new.writestr("rdf.yaml", yaml.safe_dump(rdf))
        for name in old.namelist():
            if name not in ("rdf.yaml", bmz.NATIVE):
                new.writestr(name, old.read(name))
    _, apply = viewer.window.add_plugin_dock_widget(PLUGIN, "Apply model")
    assert apply.load_model(foreign)
    assert "prediction only" in apply.model_info.text() and "Someone else" in apply.model_info.text()
    assert not apply.export_button.isEnabled()
    apply.image_picker.setCurrentText("cells")
    apply.start()
    qtbot.waitUntil(lambda: apply.worker is None, timeout=WAIT_MS)
    assert errors() == []
    result = [layer for layer in viewer.layers if layer.name.startswith("cells denoised")]
    assert len(result) == 1
    np.testing.assert_allclose(result[0].data, Denoiser.load(model_file).predict(noisy), atol=1e-3)


def test_a_damaged_package_is_a_clear_message(viewer, model_file, tmp_path, errors):
    package = bmz.export_bmz(Denoiser.load(model_file), tmp_path / "p.zip")
    cut = tmp_path / "cut.zip"
    cut.write_bytes(package.read_bytes()[:5000])
    _, apply = viewer.window.add_plugin_dock_widget(PLUGIN, "Apply model")
    assert not apply.load_model(cut)
    assert apply.denoiser is None and any("truncated" in m or "damaged" in m for m in errors())


def test_start_from_model_fine_tunes_in_the_train_widget(viewer, qtbot, model_file, errors):
    _, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train & Denoise")
    train.image_picker.setCurrentText("cells")
    train.method_picker.setCurrentIndex(train.method_picker.findData("n2s"))
    assert train.set_start_model(model_file)
    assert train.method == "n2v2" and not train.method_picker.isEnabled()
    assert train.features.value() == 4 and not train.features.isEnabled()
    assert "cells.sdmodel" in train.start_label.text()
    train.steps.setValue(2)
    train.patch.setValue(32)
    train.batch.setValue(2)
    train.start()
    qtbot.waitUntil(lambda: train.worker is None, timeout=WAIT_MS)
    assert errors() == []
    assert train.denoiser.state.step == Denoiser.load(model_file).state.step + 2
    # named apart from Apply's "cells denoised (n2v2)": fine-tuned, with its steps and time
    assert any(layer.name.startswith("cells denoised (n2v2 fine-tuned, ") for layer in viewer.layers)
    # a model that does not fit the layer is refused as the axes are checked
    viewer.add_image(np.zeros((16, 64, 64), np.float32), name="stack")
    train.image_picker.setCurrentText("stack")
    assert not train.train_button.isEnabled() and "2D" in train.axes_message.text()
    assert train.set_start_model(None) and train.method_picker.isEnabled()
