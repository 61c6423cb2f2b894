"""Issue 16: the Apply model widget remembers its settings, and shows a loaded model's training curves.
Real viewers under Xvfb; the settings file is the test's own (conftest's ``settings_file``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_selfdenoise.core.data.synthetic import add_noise, fluorescence_image
from napari_selfdenoise.core.denoiser import Denoiser

PLUGIN = "napari-selfdenoise"
SMALL = dict(features=8, depth=1, patch=32, batch=2, curve_every=0, seed=0)


@pytest.fixture
def noisy():
    return add_noise(fluorescence_image((64, 64), seed=5), "gaussian", sigma=0.1, seed=5)


@pytest.fixture
def viewer(make_napari_viewer, noisy):
    viewer = make_napari_viewer()
    viewer.add_image(noisy, name="cells")
    return viewer


def apply_widget(viewer):
    return viewer.window.add_plugin_dock_widget(PLUGIN, "Apply model")[1]


def test_tile_tta_and_the_model_folder_come_back_when_the_widget_reopens(viewer, qtbot, tmp_path, noisy,
                                                                        settings_file, monkeypatch):
    from qtpy.QtWidgets import QFileDialog

    from napari_selfdenoise._qt.apply_widget import ApplyWidget

    settings_file.parent.mkdir(parents=True)
    settings_file.write_text(json.dumps({"train": {"steps": 77}}))  # the Train widget's: kept
    folder = tmp_path / "models"
    folder.mkdir()
    path = Denoiser("n2s", "YX", steps=2, **SMALL).fit(noisy).save(folder / "cells.sdmodel")
    widget = apply_widget(viewer)
    assert (widget.tile.value(), widget.tta.isChecked()) == (0, False)  # nothing saved yet: the defaults
    widget.tile.setValue(256)
    widget.tta.setChecked(True)
    assert widget.load_model(path)
    qtbot.waitUntil(lambda: '"tile": 256' in settings_file.read_text(), timeout=5000)
    saved = json.loads(settings_file.read_text())
    assert saved["train"] == {"steps": 77}
    assert saved["apply"] == {"tile": 256, "tta": True, "model_folder": str(folder.resolve())}

    reopened = ApplyWidget(viewer)
    assert (reopened.tile.value(), reopened.tta.isChecked()) == (256, True)
    asked = []
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda parent, title, start, *a: asked.append(start) or ("", ""))
    reopened._browse()
    assert asked == [str(folder.resolve())]  # Browse opens where the last model was


def test_a_broken_or_foreign_apply_setting_falls_back_to_the_default(viewer, settings_file):
    settings_file.parent.mkdir(parents=True)
    settings_file.write_text(json.dumps({"apply": {"tile": "big", "tta": 1, "model_folder": 3}}))
    widget = apply_widget(viewer)
    assert (widget.tile.value(), widget.tta.isChecked(), widget.model_folder) == (0, False, "")


def test_a_loaded_model_shows_its_loss_history_and_noise_curve(viewer, qtbot, tmp_path, noisy):
    model = Denoiser("nnet", "YX", steps=6, steps_per_epoch=2, method_options={"calibrate": False,
                                                                             "noise_features": 8}, **SMALL)
    path = model.fit(noisy).save(tmp_path / "cells.sdmodel")
    history = model.history
    assert history["step"] == [2, 4, 6]
    widget = apply_widget(viewer)
    assert not widget.curves_button.isEnabled() and not widget.curves.isVisibleTo(widget)  # no model yet
    assert widget.load_model(path)
    assert widget.curves_button.isEnabled()
    widget.curves_button.click()
    assert widget.curves.isVisibleTo(widget) and widget.curves_button.text() == "Hide training curves"
    assert widget.loss_plot.data("training") == (history["step"], history["train_loss"])
    assert widget.loss_plot.data("validation") == (history["step"], history["val_loss"])
    # the noise level, measured on the training crop the file keeps; N-net's predicted one beside it
    qtbot.waitUntil(lambda: len(widget.noise_plot.data("measured (noisy - denoised)")[0]) > 0, timeout=60_000)
    signal, predicted = widget.noise_plot.data("predicted (N-net)")
    assert len(signal) > 0 and np.all(np.isfinite(predicted)) and min(predicted) > 0
    assert "predicted (N-net)" in widget.noise_plot.legend_names() and widget.noise_plot.note_text() == ""
    widget.curves_button.click()
    assert not widget.curves.isVisibleTo(widget)


def test_a_model_file_without_its_crop_shows_the_loss_and_says_why_no_noise_curve(viewer, tmp_path, noisy):
    model = Denoiser("n2s", "YX", steps=4, steps_per_epoch=2, **SMALL).fit(noisy)
    path = model.save(tmp_path / "bare.sdmodel", include_sample=False)
    widget = apply_widget(viewer)
    assert widget.load_model(path)
    widget.curves_button.setChecked(True)
    assert widget.loss_plot.data("training")[0] == [2, 4]
    assert "keeps no training crop" in widget.noise_plot.note_text()
    assert not widget.load_model(tmp_path / "missing.sdmodel")  # no model: nothing to show
    assert not widget.curves_button.isEnabled() and not widget.curves.isVisibleTo(widget)
    assert widget.loss_plot.data("training") == ([], [])
