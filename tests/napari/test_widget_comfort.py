"""Issue 16, the rest: tooltips on every control, remembered settings, curve export, plots that do not
mislead, a before/after toggle, and the README's screenshot script. Real viewers under Xvfb."""

from __future__ import annotations

import pytest
from qtpy.QtWidgets import QAbstractButton, QAbstractSpinBox, QComboBox, QLineEdit, QTabBar

from napari_selfdenoise.core.data.synthetic import add_noise, fluorescence_image

PLUGIN = "napari-selfdenoise"
WAIT_MS = 180_000


@pytest.fixture
def viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(add_noise(fluorescence_image((96, 96), seed=5), "gaussian", sigma=0.1, seed=5), name="cells")
    return viewer


def dock(viewer, name="Train & Denoise"):
    return viewer.window.add_plugin_dock_widget(PLUGIN, name)[1]


# ------------------------------------------------------------------------------------ tooltips
def untipped_controls(widget) -> list[str]:
    """Every control a user can click or type into, and every tab, that has no one-line tooltip."""
    missing = []
    for control in widget.findChildren((QAbstractButton, QComboBox, QAbstractSpinBox, QLineEdit)):
        if isinstance(control.parent(), QAbstractSpinBox | QComboBox | QTabBar) or control.objectName().startswith("qt_"):
            continue  # Qt's own parts: a spin box's line edit, a tab bar's scroll arrows, a table's corner
        tip = control.toolTip()
        if not tip or "\n" in tip:
            missing.append(f"{type(control).__name__} {getattr(control, 'text', lambda: '')() or control.objectName()}")
    for bar in widget.findChildren(QTabBar):
        missing += [f"tab {bar.tabText(i)}" for i in range(bar.count()) if not bar.tabToolTip(i)]
    return missing


def test_every_control_of_both_widgets_has_a_tooltip(viewer):
    for name in ("Train & Denoise", "Apply model"):
        widget = dock(viewer, name)
        missing = untipped_controls(widget)
        assert not missing, f"{name}: {missing}"


def test_the_methods_link_opens_the_readme_method_table(viewer, qtbot, monkeypatch):
    from napari_selfdenoise._qt import readme_help as help_module

    widget = dock(viewer)
    shown = []
    monkeypatch.setattr(help_module.HelpDialog, "exec", lambda dialog: shown.append(dialog.text()))
    widget.help_link.linkActivated.emit(widget.help_link.text())
    assert len(shown) == 1
    for method in ("`n2s`", "`n2v2`", "`nnet`", "`auto`", "`calibrate`"):  # the README's method table
        assert method in shown[0]


# ------------------------------------------------------------------------------- remembered settings
def test_the_last_method_budget_and_advanced_options_come_back(viewer, qtbot, settings_file):
    from napari_selfdenoise._qt.train_widget import TrainWidget

    widget = dock(viewer)
    assert widget.method == "auto"  # nothing saved yet: the defaults
    widget.method_picker.setCurrentIndex(widget.method_picker.findData("nnet"))
    for spin, value in ((widget.steps, 321), (widget.minutes, 2.5), (widget.patch, 48), (widget.lr, 0.001),
                        (widget.mixture, 2), (widget.blind_radius, 1)):
        spin.setValue(value)
    widget.tta.setChecked(True)
    qtbot.waitUntil(lambda: settings_file.exists() and '"steps": 321' in settings_file.read_text(), timeout=5000)
    reopened = TrainWidget(viewer)
    assert reopened.method == "nnet" and reopened.mixture.isVisibleTo(reopened) == widget.mixture.isVisibleTo(widget)
    assert (reopened.steps.value(), reopened.minutes.value(), reopened.patch.value()) == (321, 2.5, 48)
    assert (reopened.lr.value(), reopened.mixture.value(), reopened.blind_radius.value()) == (0.001, 2, 1)
    assert reopened.tta.isChecked() and reopened.device_picker.currentData() == "auto"


def test_a_broken_settings_file_is_ignored_with_a_warning(viewer, qtbot, settings_file):
    from napari.utils.notifications import notification_manager

    from napari_selfdenoise._qt.train_widget import TrainWidget

    settings_file.parent.mkdir(parents=True)
    settings_file.write_text('{"train": {"steps": 12')  # cut off mid-write by another program
    start = len(notification_manager.records)
    widget = dock(viewer)
    assert widget.method == "auto" and widget.steps.value() == 2000  # the defaults
    warnings = [n.message for n in notification_manager.records[start:] if "settings" in n.message]
    assert len(warnings) == 1 and "ignoring" in warnings[0] and str(settings_file) in warnings[0]
    widget.steps.setValue(77)  # the next change writes a good file
    qtbot.waitUntil(lambda: '"steps": 77' in settings_file.read_text(), timeout=5000)
    settings_file.write_text('{"train": {"steps": "many", "method_picker": "gone", "seed": 5}}')
    reopened = TrainWidget(viewer)
    assert (reopened.steps.value(), reopened.method, reopened.seed.value()) == (2000, "auto", 5)


# ------------------------------------------------------------------------------------------ plots
def test_a_single_point_shows_a_marker_and_a_flat_curve_stays_flat(viewer):
    widget = dock(viewer)
    plot = widget.loss_plot
    plot.set_data("training", [1], [0.5])
    plot.redraw()
    assert plot.curves["training"].opts["symbol"] is not None  # after step 1: a dot, not an empty plot
    plot.set_data("training", [1, 2, 3, 4], [0.5, 0.50001, 0.49999, 0.5])  # flat but for rounding
    plot.redraw()
    low, high = plot.getPlotItem().getViewBox().viewRange()[1]
    assert high - low >= 0.02 * 0.5  # not autoscaled into waves
    assert plot.curves["training"].opts["symbol"] is None  # a line again
    plot.set_data("training", [1, 2, 3, 4], [0.9, 0.6, 0.4, 0.3])  # a real decrease: autoscaled
    plot.redraw()
    low, high = plot.getPlotItem().getViewBox().viewRange()[1]
    assert high - low < 1.0


def test_the_noise_legend_is_off_the_curves_and_predicted_only_for_nnet(viewer, qtbot):
    widget = dock(viewer)
    widget.method_picker.setCurrentIndex(widget.method_picker.findData("classic"))
    widget.start()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    plot = widget.noise_plot
    plot.redraw()
    assert len(plot.data("measured (noisy - denoised)")[0]) > 1
    assert plot.legend_names() == ["measured (noisy - denoised)"]  # no N-net curve for classic
    box = plot.getPlotItem().getViewBox().sceneBoundingRect()
    assert not plot.legend.sceneBoundingRect().intersects(box)  # under the plot, not over the curves
    # classic trains nothing: the loss tab says so instead of staying blank
    assert "classic" in widget.loss_plot.note_text() and "does not train" in widget.loss_plot.note_text()
    widget.method_picker.setCurrentIndex(widget.method_picker.findData("nnet"))
    for spin, value in ((widget.steps, 3), (widget.features, 8), (widget.depth, 1), (widget.patch, 32),
                        (widget.batch, 2)):
        spin.setValue(value)
    widget.start()
    assert widget.loss_plot.note_text() == ""
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert plot.legend_names() == ["measured (noisy - denoised)", "predicted (N-net)"]


# ------------------------------------------------------------------------------------ curve export
def test_curves_export_as_csv_and_png_from_the_images_folder(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    import csv

    import tifffile
    from qtpy.QtWidgets import QFileDialog

    folder = tmp_path / "images"
    folder.mkdir()
    tifffile.imwrite(folder / "cells.tif", add_noise(fluorescence_image((96, 96), seed=6), "gaussian", sigma=0.1,
                                                      seed=6))
    viewer = make_napari_viewer()
    viewer.open(folder / "cells.tif", plugin=PLUGIN)
    widget = dock(viewer)
    widget.method_picker.setCurrentIndex(widget.method_picker.findData("n2s"))
    for spin, value in ((widget.steps, 4), (widget.features, 8), (widget.depth, 1), (widget.patch, 32),
                        (widget.batch, 2)):
        spin.setValue(value)
    widget.start()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    asked = []

    def answer(name, chosen):
        def dialog(parent, title, start, filters):
            asked.append(start)
            return str(folder / name), chosen
        return dialog

    monkeypatch.setattr(QFileDialog, "getSaveFileName", answer("curves.csv", "CSV table (*.csv)"))
    assert widget.export_curves() == folder / "curves.csv"
    assert asked[-1] == str(folder / "cells-n2s-curves.csv")  # the image's folder, not the process's
    with open(folder / "curves.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    steps, losses = widget.loss_plot.data("training")
    written = [(float(r["x"]), float(r["y"])) for r in rows if r["plot"] == "Loss" and r["curve"] == "training"]
    assert written == list(zip(map(float, steps), map(float, losses))) and len(written) == 4
    signal, std = widget.noise_plot.data("measured (noisy - denoised)")
    noise_rows = [r for r in rows if r["plot"] == "Noise level" and r["curve"] == "measured (noisy - denoised)"]
    assert len(noise_rows) == len(signal) > 1 and float(noise_rows[0]["y"]) == pytest.approx(std[0])

    widget.plots.setCurrentWidget(widget.noise_plot)
    monkeypatch.setattr(QFileDialog, "getSaveFileName", answer("noise", "PNG image of the shown plot (*.png)"))
    assert widget.export_curves() == folder / "noise.png"
    assert (folder / "noise.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", answer("m.sdmodel", ""))
    widget.save_model()
    assert asked[-1] == str(folder / "cells-n2s.sdmodel")  # the model is offered beside the image too
    assert sorted(p.name for p in folder.iterdir()) == ["cells.tif", "curves.csv", "m.sdmodel", "noise.png"]


# ---------------------------------------------------------------------------------- before / after
def test_before_after_shows_input_and_result_side_by_side_and_back(viewer, qtbot, errors):
    import numpy as np

    viewer.add_image(np.zeros((96, 96), np.float32), name="other")
    viewer.layers["other"].visible = False
    widget = dock(viewer)
    widget.image_picker.setCurrentText("cells")
    widget.compare_button.setChecked(True)  # nothing trained yet: says so, stays off
    assert not widget.compare_button.isChecked() and "train first" in errors()[-1]
    widget.method_picker.setCurrentIndex(widget.method_picker.findData("classic"))
    widget.start()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    result = next(layer for layer in viewer.layers if layer.metadata.get("output") == "denoised")
    before = {layer.name: layer.visible for layer in viewer.layers}
    widget.compare_button.setChecked(True)
    grid = viewer.canvas.grid if hasattr(viewer, "canvas") else viewer.grid
    assert grid.enabled and {layer.name for layer in viewer.layers if layer.visible} == {"cells", result.name}
    assert grid.actual_shape(viewer.layers) == (1, 2)  # the two side by side
    widget.compare_button.setChecked(False)
    assert not grid.enabled and {layer.name: layer.visible for layer in viewer.layers} == before


# ------------------------------------------------------------------------------ README screenshots
def test_the_readme_screenshot_script_runs_in_a_1280x720_window(make_napari_viewer, tmp_path):
    import importlib.util
    from pathlib import Path

    from qtpy.QtGui import QImage

    script = Path(__file__).parents[2] / "docs" / "make_screenshots.py"
    spec = importlib.util.spec_from_file_location("make_screenshots", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    viewer = make_napari_viewer(show=True)
    shots = module.take_screenshots(viewer, tmp_path, steps=4, minutes=0, small=True)
    assert [p.name for p in shots] == ["train-during.png", "train-scores.png", "train-compare.png",
                                       "apply-model.png"]
    for shot in shots:
        image = QImage(str(shot))
        assert (image.width(), image.height()) == (1280, 720), shot.name
