"""Issue 16: a Train widget that says what is happening (progress against the time limit, every state
shown and kept), fits a laptop screen, and picks the right input. Real viewers under Xvfb."""

from __future__ import annotations

import re

import numpy as np
import pytest

from napari_selfdenoise._qt.common import rate_text
from napari_selfdenoise.core.data.synthetic import add_noise, fluorescence_image

PLUGIN = "napari-selfdenoise"
WAIT_MS = 180_000


@pytest.fixture
def noisy():
    return add_noise(fluorescence_image((128, 128), seed=4), "gaussian", sigma=0.1, seed=4)


@pytest.fixture
def viewer(make_napari_viewer, noisy):
    viewer = make_napari_viewer()
    viewer.add_image(noisy, name="cells")
    return viewer


def train_widget(viewer, steps=6, method="n2s"):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Train & Denoise")
    widget.image_picker.setCurrentText("cells")
    widget.method_picker.setCurrentIndex(widget.method_picker.findData(method))
    widget.steps.setValue(steps)
    widget.features.setValue(8)
    widget.depth.setValue(1)
    widget.patch.setValue(32)
    widget.batch.setValue(2)
    return widget


def record_states(widget):
    states = []
    widget.state_changed.connect(states.append)
    return states


def seconds_left(text: str) -> float:
    h, m, s = map(int, re.search(r"(\d+):(\d\d):(\d\d) left", text).groups())
    return 3600 * h + 60 * m + s


def test_the_bar_and_time_left_follow_the_time_limit(viewer, qtbot):
    widget = train_widget(viewer, steps=1_000_000)
    widget.minutes.setValue(0.1)  # 6 s: the time limit, not the steps, ends this run
    widget.start()
    qtbot.waitUntil(lambda: len(widget.losses["step"]) >= 3, timeout=WAIT_MS)
    event = widget.run["last_event"]
    # the bar shows the elapsed part of the time limit (the steps alone would say ~0 %)
    assert widget.progress.value() == int(1000 * min(1.0, event.elapsed / 6.0))
    assert seconds_left(widget.status.text()) <= 6
    assert "1000000" in widget.status.text()
    wait_done(qtbot, widget)
    assert widget.state == "done"


def wait_done(qtbot, widget):
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)


def test_every_state_of_an_nnet_run_is_shown_in_order(viewer, qtbot):
    widget = train_widget(viewer, steps=4, method="nnet")
    states = record_states(widget)
    texts = []
    widget.state_changed.connect(lambda _: texts.append(widget.status.text()))
    widget.start()
    wait_done(qtbot, widget)
    assert states == ["starting", "running", "finishing", "predicting", "checking", "done"]
    finishing = texts[states.index("finishing")]
    assert "calibrating the noise model" in finishing and "so far" in finishing  # shown, with its time
    assert widget.status.text().startswith("Training done")


def test_pause_shows_and_stays_while_the_step_in_flight_arrives(viewer, qtbot):
    widget = train_widget(viewer, steps=1_000_000)
    states = record_states(widget)
    widget.start()
    qtbot.waitUntil(lambda: len(widget.losses["step"]) >= 2, timeout=WAIT_MS)
    widget.pause_button.setChecked(True)
    qtbot.waitUntil(lambda: widget.worker.is_paused, timeout=WAIT_MS)
    qtbot.wait(300)  # the step that was running when Pause was pressed arrives now
    assert widget.status.text().startswith("Paused")
    assert widget.state == "paused" and states[-1] == "paused"
    widget.pause_button.setChecked(False)
    qtbot.waitUntil(lambda: widget.state == "running", timeout=WAIT_MS)
    widget.stop()
    assert widget.state == "stopping" and widget.status.text().startswith("Stopping")
    wait_done(qtbot, widget)
    assert states[-4:] == ["stopping", "predicting", "checking", "done"]  # checking: the verdict
    assert "stopped early" in widget.status.text()


def test_cancelled_classic_stays_cancelled(viewer, qtbot, errors):
    widget = train_widget(viewer, method="classic")
    states = record_states(widget)
    widget.start()
    qtbot.waitUntil(lambda: widget.state == "predicting", timeout=WAIT_MS)  # calibrating
    widget.stop()  # classic has no training to stop: Stop cancels
    assert widget.status.text() == "Cancelled."
    wait_done(qtbot, widget)
    qtbot.wait(200)  # any message still queued from the worker
    assert widget.status.text() == "Cancelled." and widget.state == "cancelled"
    assert states[-1] == "cancelled" and "done" not in states
    assert "cells denoised (classic)" not in viewer.layers
    assert widget.progress.value() == 0  # not frozen at the last calibration step
    assert errors() == []


@pytest.mark.parametrize("rate, text", [(250.0, "250 patches/s"), (1.26, "1.3 patches/s"),
                                        (0.44, "2 s/patch"), (0.0, "measuring speed")])
def test_slow_3d_training_speed_is_not_zero_patches_per_second(rate, text):
    assert rate_text(rate) == text


def test_an_under_trained_result_is_not_handed_back_as_good(viewer, qtbot, errors):
    widget = train_widget(viewer, steps=2, method="n2s")  # 2 steps: far from a usable network
    states = record_states(widget)
    widget.start()
    wait_done(qtbot, widget)
    assert "checking" in states and states[-1] == "done"
    text = widget.status.text()
    assert "Not better than a classical filter" in text or "barely differs from the input" in text
    assert "Save the model" not in text
    assert widget.classic_button.isVisibleTo(widget)
    table = widget.score_table
    assert [table.item(r, 0).text() for r in range(table.rowCount())] == ["n2s", "classic"]
    widget.classic_button.click()  # the better one, in seconds
    wait_done(qtbot, widget)
    kept = {layer.metadata.get("method") for layer in viewer.layers if layer.metadata.get("output") == "denoised"}
    assert kept == {"n2s", "classic"}  # both kept, named apart
    assert not widget.classic_button.isVisibleTo(widget)
    assert errors() == []


def test_auto_is_the_default_and_shows_its_score_table(viewer, qtbot, errors):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Train & Denoise")
    assert widget.method == "auto"
    widget.image_picker.setCurrentText("cells")
    for spin, value in ((widget.steps, 8), (widget.features, 8), (widget.depth, 1), (widget.patch, 32),
                        (widget.batch, 2)):
        spin.setValue(value)
    widget.start()
    qtbot.waitUntil(lambda: widget.score_table.rowCount() > 0, timeout=WAIT_MS)
    assert widget.score_table.item(0, 0).text() == "classic"  # scored first, in seconds
    wait_done(qtbot, widget)
    assert errors() == []
    table = widget.score_table
    rows = {table.item(r, 0).text(): table.item(r, 3).text() for r in range(table.rowCount())}
    assert set(rows) == {"classic", "n2s", "nnet", "n2same"}
    assert list(rows.values()).count("winner") == 1
    winner = next(m for m, status in rows.items() if status == "winner")
    assert f"Auto done: {winner}" in widget.status.text() and "Estimated quality" in widget.status.text()
    layer = next(layer for layer in viewer.layers if layer.metadata.get("output") == "denoised")
    assert layer.name.startswith(f"cells denoised (auto: {winner}, ") and layer.metadata["method"] == winner


# ------------------------------------------------------------------------------ the right input
def test_after_open_sample_the_noisy_layer_is_chosen(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "noisy_cells_2d")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Train & Denoise")
    _, apply = viewer.window.add_plugin_dock_widget(PLUGIN, "Apply model")
    assert widget.image_picker.currentText() == "cells 2D (noisy)"  # not the hidden "(clean)" reference
    assert apply.image_picker.currentText() == "cells 2D (noisy)"
    assert "a 2D network on Y, X" in widget.axes_message.text()


def test_the_axes_message_says_which_network_and_when_axes_were_guessed(viewer):
    viewer.add_image(np.zeros((20, 64, 64), np.float32), name="bare", metadata={"axes": "ZYX", "axes_guessed": True})
    widget = train_widget(viewer)
    widget.image_picker.setCurrentText("bare")
    text = widget.axes_message.text()
    assert "a 3D network on Z, Y, X" in text and "guessed" in text
    widget.axes_edit.setText("TYX")  # the user confirms another reading: no longer a guess
    text = widget.axes_message.text()
    assert "a 2D network on Y, X; 20 T as samples" in text and "guessed" not in text
    assert widget.train_button.isEnabled()


def test_a_6d_layer_is_a_clear_message_in_both_widgets(viewer, errors, capfd):
    viewer.add_image(np.zeros((2, 2, 2, 4, 32, 32), np.float32), name="six")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Train & Denoise")
    _, apply = viewer.window.add_plugin_dock_widget(PLUGIN, "Apply model")  # opens
    for w in (widget, apply):
        w.image_picker.setCurrentText("six")
        assert w.axes_edit.text() == ""
        assert "cannot guess the axes of 'six', a 6-dimensional image" in w.axes_message.text()
    assert not widget.train_button.isEnabled() and not apply.apply_button.isEnabled()
    widget.image_picker.setCurrentText("cells")  # another layer: its own axes, Train enabled again
    assert widget.axes_edit.text() == "YX" and widget.train_button.isEnabled()
    assert "SelfDenoiseError" not in capfd.readouterr().err


def test_a_region_smaller_than_the_patch_says_so(viewer, errors):
    viewer.add_shapes([np.array([[40, 40], [50, 50]])], shape_type="rectangle", name="roi")
    widget = train_widget(viewer)
    widget.region_picker.setCurrentText("roi")
    widget.start()
    assert widget.worker is None
    assert any("training region 1 is only 10 pixels" in m and "at least 32 pixels" in m for m in errors())


# ------------------------------------------------------------------------- layers and the viewer
def test_removing_the_source_layer_while_training_cancels(viewer, qtbot, monkeypatch):
    from napari_selfdenoise.core import jobs

    monkeypatch.setattr(jobs, "PREVIEW_FIRST", 0.0)
    widget = train_widget(viewer, steps=1_000_000)
    widget.start()
    qtbot.waitUntil(lambda: widget.run["preview_layer"] is not None, timeout=WAIT_MS)
    assert widget.image_picker.currentText() == "cells"  # the preview layer is no input
    viewer.layers.remove("cells")
    wait_done(qtbot, widget)
    assert widget.state == "cancelled" and "was removed" in widget.status.text()
    assert len(viewer.layers) == 0  # no "<removed> denoised", no preview left
    assert widget.denoiser.state.step < 1_000_000


def test_closing_the_viewer_while_training_prints_nothing(make_napari_viewer, noisy, qtbot, capfd, recwarn):
    viewer = make_napari_viewer()
    viewer.add_image(noisy, name="cells")
    widget = train_widget(viewer, steps=1_000_000)
    widget.start()
    qtbot.waitUntil(lambda: len(widget.losses["step"]) >= 2, timeout=WAIT_MS)
    worker, denoiser = widget.worker, widget.denoiser
    viewer.close()
    qtbot.waitUntil(lambda: worker.is_running is False, timeout=WAIT_MS)
    qtbot.wait(500)
    assert denoiser.state.step < 1_000_000
    assert "Error" not in capfd.readouterr().err
    # superqt reports a worker whose Qt signals were deleted under it as a RuntimeWarning (on stderr)
    assert not [w for w in recwarn if "aborted thread" in str(w.message)]


def test_the_reader_keeps_a_time_lapse_frame_interval(make_napari_viewer, tmp_path):
    import tifffile
    from napari.utils.notifications import notification_manager

    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, np.random.default_rng(0).random((5, 64, 64), np.float32), imagej=True,
                     resolution=(5.0, 5.0), metadata={"axes": "TYX", "unit": "um", "finterval": 2.5})
    viewer = make_napari_viewer()
    start = len(notification_manager.records)
    [layer] = viewer.open(path, plugin=PLUGIN)
    assert tuple(layer.scale) == (2.5, 0.2, 0.2)
    assert [str(u) for u in layer.units] == ["second", "micrometer", "micrometer"]
    viewer.add_image(np.zeros((3, 64, 64), np.float32), scale=(60, 0.2, 0.2), units=("min", "µm", "µm"))
    viewer.window._qt_viewer.canvas._update_world_units()  # what the next draw does
    assert not [n for n in notification_manager.records[start:] if "Inconsistent units" in n.message]


# --------------------------------------------------------------------------------- a laptop screen
def test_both_widgets_fit_a_1280x720_window(make_napari_viewer, qtbot):
    from qtpy.QtWidgets import QAbstractButton, QLabel

    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(1280, 720)
    viewer.open_sample(PLUGIN, "noisy_cells_2d")
    _, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train & Denoise")
    _, apply = viewer.window.add_plugin_dock_widget(PLUGIN, "Apply model")
    train.advanced.expand(animate=False)
    qtbot.wait(300)
    assert window.height() <= 720 and window.width() <= 1280  # napari did not grow past the screen
    assert viewer.window._qt_viewer.canvas.native.width() >= 400  # the image keeps room
    assert train.height() >= 250 and apply.height() >= 200  # neither dock squashed to a sliver
    for widget in (train, apply):
        area = widget.findChild(type(train.scroll_area))
        for label in widget.findChildren(QLabel):
            if label.isVisibleTo(widget) and label.text() and label.width() > 0:
                # no clipped text: a wrapped label is as tall as its text needs, a plain one as wide
                needed = label.heightForWidth(label.width()) if label.wordWrap() else -1
                assert needed <= label.height() + 1, label.text()
                if not label.wordWrap():
                    assert label.sizeHint().width() <= label.width() + 1, label.text()
        for button in widget.findChildren(QAbstractButton):  # everything reachable by scrolling
            if button.isVisibleTo(widget) and area.widget().isAncestorOf(button):
                area.ensureWidgetVisible(button, 0, 0)
                qtbot.wait(10)
                corner = button.mapTo(area.viewport(), button.rect().bottomRight())
                assert area.viewport().rect().contains(corner), button.text()
