"""The two dock widgets in a real napari viewer (Xvfb): training through the real worker, results,
Stop, Pause/Resume, save -> Apply model, and bad input shown as notifications."""

from __future__ import annotations

import numpy as np
import pytest

from napari_selfdenoise.core import jobs
from napari_selfdenoise.core.data.synthetic import add_noise, fluorescence_image
from napari_selfdenoise.core.denoiser import Denoiser

PLUGIN = "napari-selfdenoise"
SCALE = (2.0, 0.5)
TRANSLATE = (10.0, -4.0)
WAIT_MS = 180_000  # generous: the CI machine has 2 cores and other tests may share them


@pytest.fixture
def noisy():
    return add_noise(fluorescence_image((128, 128), seed=4), "gaussian", sigma=0.1, seed=4)


@pytest.fixture
def viewer(make_napari_viewer, noisy):
    viewer = make_napari_viewer()
    viewer.add_image(noisy, name="cells", scale=SCALE, translate=TRANSLATE, axis_labels=("y", "x"))
    return viewer


def train_widget(viewer, steps=6, method="n2v2"):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Train & Denoise")
    widget.image_picker.setCurrentText("cells")
    choose(widget, method)
    widget.steps.setValue(steps)
    widget.features.setValue(8)
    widget.depth.setValue(1)
    widget.patch.setValue(32)
    widget.batch.setValue(2)
    return widget


def choose(widget, method):
    widget.method_picker.setCurrentIndex(widget.method_picker.findData(method))


def results(viewer) -> dict:
    """The result layers of the Train widget, by output ("denoised", "noise_std")."""
    return {layer.metadata["output"]: layer for layer in viewer.layers if "output" in layer.metadata}


def wait_done(qtbot, widget):
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)


def test_both_widgets_open_from_the_manifest(viewer):
    _, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train & Denoise")
    _, apply = viewer.window.add_plugin_dock_widget(PLUGIN, "Apply model")
    assert train.image_picker.currentText() == "cells"
    assert train.axes_edit.text() == "YX"
    assert train.train_button.isEnabled()
    assert not apply.apply_button.isEnabled()  # no model loaded yet
    assert "load a model" in apply.axes_message.text()


@pytest.mark.parametrize("method", ["n2s", "n2v", "n2v2", "n2same", "nnet", "classic"])
def test_each_method_trains_through_the_worker_and_adds_results(viewer, qtbot, method, noisy, errors):
    widget = train_widget(viewer)
    choose(widget, method)
    source = viewer.layers["cells"]
    before = source.data.copy()
    widget.start()
    assert widget.worker is not None and not widget.train_button.isEnabled()
    wait_done(qtbot, widget)
    assert errors() == []
    result = results(viewer)["denoised"]
    assert result.metadata["method"] == method
    # named by method, steps and time, so that several results can be told apart
    assert result.name.startswith(f"cells denoised ({method}, 6 steps, " if method != "classic"
                                  else "cells denoised (classic ")
    assert result.data.shape == noisy.shape and result.data.dtype == np.float32
    assert tuple(result.scale) == SCALE and tuple(result.translate) == TRANSLATE
    assert tuple(result.axis_labels) == ("y", "x")
    assert np.array_equal(source.data, before)  # the source layer is never modified
    expected_layers = {"cells", result.name} | ({results(viewer)["noise_std"].name} if method == "nnet" else set())
    assert {layer.name for layer in viewer.layers} == expected_layers  # and no preview layer left behind
    widget.noise_plot.redraw()
    signal, std = widget.noise_plot.data("measured (noisy - denoised)")
    assert len(signal) >= 3 and all(s > 0 for s in std)
    if method == "nnet":
        noise = results(viewer)["noise_std"]
        assert viewer.layers.index(noise) < viewer.layers.index(result)  # below: it does not hide the result
        assert noise.data.shape == noisy.shape and (noise.data > 0).all()
        assert len(widget.noise_plot.data("predicted (N-net)")[1]) == len(signal)
    if method != "classic":
        steps, losses = widget.loss_plot.data("training")
        assert list(steps) == list(range(1, 7)) and np.isfinite(losses).all()
        assert len(widget.loss_plot.data("validation")[0]) >= 1
        assert widget.save_button.isEnabled()


def test_live_preview_layer_sits_on_the_source(viewer, qtbot, monkeypatch):
    monkeypatch.setattr(jobs, "PREVIEW_FIRST", 0.0)
    monkeypatch.setattr(jobs, "PREVIEW_SIZE", 64)
    widget = train_widget(viewer, steps=4)
    seen = []  # each inserted layer as it was added: (layer, name, shape, scale, translate)
    viewer.layers.events.inserted.connect(lambda e: seen.append(
        (e.value, e.value.name, e.value.data.shape, tuple(e.value.scale), tuple(e.value.translate))))
    widget.start()
    wait_done(qtbot, widget)
    preview, _, shape, scale, translate = next(added for added in seen if "preview" in added[1])
    assert shape == (64, 64)
    region = jobs.preview_region((128, 128), "YX", size=64)
    assert scale == SCALE
    assert translate == tuple(t + r.start * s for t, r, s in zip(TRANSLATE, region, SCALE))
    assert widget.first_preview_seconds is not None
    # when training ends the preview becomes the result (no layer removed and added: a stall less)
    assert [added[0] for added in seen] == [preview] and results(viewer)["denoised"] is preview
    assert preview.data.shape == (128, 128) and tuple(preview.translate) == TRANSLATE
    assert "preview" not in preview.name and viewer.layers[-1] is preview
    assert viewer.layers.selection.active is preview


def test_stop_ends_training_and_still_adds_the_best_result(viewer, qtbot):
    widget = train_widget(viewer, steps=100_000)
    widget.start()
    qtbot.waitUntil(lambda: len(widget.losses["step"]) >= 3, timeout=WAIT_MS)
    widget.stop()
    wait_done(qtbot, widget)
    steps = widget.denoiser.state.step
    assert steps < 100
    assert results(viewer)["denoised"].metadata["method"] == "n2v2"
    assert "stopped early" in widget.status.text()


def test_training_imports_nothing_in_the_worker(viewer, qtbot):
    """An import in the worker holds the GIL and freezes the viewer (torch's optimizers import torch._dynamo
    and sympy, ~800 modules, on first use): opening the widget imports the engine. Run alone this fails
    without that (other tests may have imported those modules before)."""
    import sys

    widget = train_widget(viewer, steps=3)
    before = set(sys.modules)
    widget.start()
    wait_done(qtbot, widget)
    new = sorted(set(sys.modules) - before)
    assert not [m for m in new if m.startswith(("torch._dynamo", "sympy", "napari_selfdenoise"))], new
    assert len(new) < 20, new


def test_pause_holds_training_and_resume_continues(viewer, qtbot):
    widget = train_widget(viewer, steps=100_000)
    widget.start()
    qtbot.waitUntil(lambda: len(widget.losses["step"]) >= 2, timeout=WAIT_MS)
    widget.pause_button.setChecked(True)
    qtbot.waitUntil(lambda: widget.worker.is_paused, timeout=WAIT_MS)
    qtbot.wait(300)  # let the step in flight arrive
    held = len(widget.losses["step"])
    qtbot.wait(1500)
    assert len(widget.losses["step"]) == held
    assert widget.pause_button.text() == "Resume"
    widget.pause_button.setChecked(False)
    qtbot.waitUntil(lambda: len(widget.losses["step"]) > held, timeout=WAIT_MS)
    widget.stop()
    wait_done(qtbot, widget)


def test_saved_model_applies_in_the_apply_widget(viewer, qtbot, tmp_path, noisy, errors):
    widget = train_widget(viewer)
    widget.start()
    wait_done(qtbot, widget)
    path = widget.save_model(tmp_path / "cells.sdmodel")
    assert path.exists()
    assert Denoiser.load(path).history["step"]  # the training history travels with the model

    _, apply = viewer.window.add_plugin_dock_widget(PLUGIN, "Apply model")
    assert apply.load_model(path)
    assert "N2V2" in apply.model_info.text() and "YX" in apply.model_info.text()
    apply.image_picker.setCurrentText("cells")
    assert apply.apply_button.isEnabled()
    viewer.layers.remove(results(viewer)["denoised"])
    apply.start()
    qtbot.waitUntil(lambda: apply.worker is None, timeout=WAIT_MS)
    assert errors() == []
    result = viewer.layers["cells denoised (n2v2)"]
    expected = Denoiser.load(path).predict(noisy)
    np.testing.assert_allclose(result.data, expected, atol=1e-5)
    assert tuple(result.scale) == SCALE


def test_labels_and_points_layers_are_not_offered(viewer):
    viewer.add_labels(np.zeros((32, 32), np.uint8), name="masks")
    viewer.add_points([[1, 1]], name="spots")
    widget = train_widget(viewer)
    items = [widget.image_picker.itemText(i) for i in range(widget.image_picker.count())]
    assert items == ["cells"]
    viewer.layers.remove("cells")
    assert widget.image_picker.count() == 0
    assert not widget.train_button.isEnabled()
    assert "choose an image layer" in widget.axes_message.text()


def test_a_tiny_image_is_refused_before_training(viewer, errors):
    viewer.add_image(np.ones((1, 1), np.float32), name="dot")
    widget = train_widget(viewer)
    widget.image_picker.setCurrentText("dot")
    assert not widget.train_button.isEnabled()
    assert "too small" in widget.axes_message.text()
    count = len(viewer.layers)
    widget.start()
    assert widget.worker is None and len(viewer.layers) == count
    assert any("too small" in message for message in errors())


def test_nan_image_shows_a_clear_error_and_adds_no_layer(viewer, qtbot, noisy, errors):
    bad = noisy.copy()
    bad[5, 5] = np.nan
    viewer.add_image(bad, name="holes")
    widget = train_widget(viewer)
    widget.image_picker.setCurrentText("holes")
    count = len(viewer.layers)
    widget.start()
    wait_done(qtbot, widget)
    assert len(viewer.layers) == count
    assert any("NaN" in message for message in errors())
    assert widget.train_button.isEnabled()  # ready to try again


def test_axes_are_validated_as_you_type(viewer):
    widget = train_widget(viewer)
    widget.axes_edit.setText("ZYX")
    assert not widget.train_button.isEnabled()
    assert widget.axes_message.text()
    widget.axes_edit.setText("yx")
    assert widget.train_button.isEnabled()


def test_a_model_whose_axes_do_not_fit_is_refused(viewer, qtbot, tmp_path, noisy, errors):
    model = Denoiser("n2s", "YX", steps=2, features=8, depth=1, patch=32, batch=2).fit(noisy)
    path = model.save(tmp_path / "two_d.sdmodel")
    viewer.add_image(np.stack([noisy] * 20), name="stack", axis_labels=("z", "y", "x"))
    _, apply = viewer.window.add_plugin_dock_widget(PLUGIN, "Apply model")
    apply.load_model(path)
    apply.image_picker.setCurrentText("stack")
    assert apply.axes_edit.text() == "ZYX"
    assert not apply.apply_button.isEnabled()
    assert "2D" in apply.axes_message.text() and "'TYX'" in apply.axes_message.text()
    apply.start()
    assert apply.worker is None and "stack denoised (n2s)" not in viewer.layers
    assert any("2D" in message for message in errors())
    apply.axes_edit.setText("TYX")  # the same stack read as a time-lapse of 2-D frames fits
    assert apply.apply_button.isEnabled()


def test_a_broken_model_file_is_a_clear_message(viewer, tmp_path, errors):
    path = tmp_path / "broken.sdmodel"
    path.write_bytes(b"not a model")
    _, apply = viewer.window.add_plugin_dock_widget(PLUGIN, "Apply model")
    assert not apply.load_model(path)
    assert apply.denoiser is None and errors()


def test_closing_the_viewer_while_training_stops_cleanly(make_napari_viewer, noisy, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(noisy, name="cells")
    widget = train_widget(viewer, steps=100_000)
    widget.start()
    qtbot.waitUntil(lambda: len(widget.losses["step"]) >= 1, timeout=WAIT_MS)
    worker, denoiser = widget.worker, widget.denoiser
    finished = []
    worker.finished.connect(lambda: finished.append(True))
    viewer.close()
    qtbot.waitUntil(lambda: bool(finished), timeout=WAIT_MS)
    assert denoiser.state.step < 1000


def test_training_region_from_a_shapes_layer(viewer, qtbot, noisy, errors, monkeypatch):
    seen = []
    original = jobs.train_job
    monkeypatch.setattr(jobs, "train_job", lambda *a, **k: seen.append(a[2]) or original(*a, **k))
    # A rectangle drawn in world coordinates over rows 20-60 and columns 8-100 of the image.
    corners = np.array([[20, 8], [60, 100]]) * SCALE + TRANSLATE
    viewer.add_shapes([corners], shape_type="rectangle", name="region")
    widget = train_widget(viewer, steps=2)
    widget.region_picker.setCurrentText("region")
    widget.start()
    wait_done(qtbot, widget)
    assert errors() == []
    assert seen == [[(slice(20, 60), slice(8, 100))]]
    assert results(viewer)["denoised"].data.shape == noisy.shape


def test_an_empty_shapes_layer_is_a_clear_message(viewer, errors):
    viewer.add_shapes(name="nothing")
    widget = train_widget(viewer)
    widget.region_picker.setCurrentText("nothing")
    widget.start()
    assert widget.worker is None
    assert any("is empty" in message for message in errors())


def test_method_options_show_for_their_methods_and_reach_the_config(viewer):
    widget = train_widget(viewer)
    widget.blind_radius.setValue(2)
    widget.mixture.setValue(2)
    shown = lambda label: not widget.method_rows[label][1].isHidden()
    for method, expected in (("n2s", {"blind_radius": 2}), ("n2v2", {"blind_radius": 2}),
                             ("nnet", {"blind_radius": 2, "mixture": 2}),
                             ("n2same", {"blind_radius": 2, "lambda_inv": 2.0})):
        choose(widget, method)
        assert widget.config("YX").method_options == expected
        assert shown("blind radius") and shown("noise mixture K") == (method == "nnet")
    choose(widget, "classic")  # calibrated, not trained: only the blind radius applies
    assert shown("blind radius") and not shown("noise mixture K") and not shown("λ invariance")
    assert widget.blind_radius.isEnabled() and not widget.patch.isEnabled() and not widget.steps.isEnabled()


def test_a_layer_with_noise_shared_by_neighbours_gets_the_blind_radius_note(viewer):
    viewer.add_image(add_noise(fluorescence_image((128, 128)), "shared_gaussian", sigma=0.1), name="resampled")
    widget = train_widget(viewer)  # picks "cells": independent noise
    assert widget.noise_note.isHidden()
    widget.image_picker.setCurrentText("resampled")
    assert not widget.noise_note.isHidden()
    assert "shared by neighbouring pixels" in widget.noise_note.text()
    assert "Try blind radius 2" in widget.noise_note.text()
    choose(widget, "auto")  # auto decides itself, and says so
    assert "auto will use blind radius 2" in widget.noise_note.text()
    assert "neighbour-difference ratio" in widget.noise_note.toolTip()  # the why, on hover
    widget.blind_radius.setValue(2)  # set: the note goes
    assert widget.noise_note.isHidden()
    widget.blind_radius.setValue(0)
    widget.axes_edit.setText("ZYX")  # axes that do not fit: no note (and no error)
    assert widget.noise_note.isHidden()
    widget.axes_edit.setText("YX")
    widget.image_picker.setCurrentText("cells")
    assert widget.noise_note.isHidden()
