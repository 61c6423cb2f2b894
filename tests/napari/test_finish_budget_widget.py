"""Issue 16: in the Train widget, N-net's finishing stage (the noise calibration) ends within the time
limit. A real viewer under Xvfb; time is made deterministic as in tests/core/training/test_finish_budget.py:
the trainer's clock is a counter that every likelihood evaluation advances by 1 s."""

from __future__ import annotations

import pytest

from napari_selfdenoise.core.data.synthetic import add_noise, fluorescence_image

PLUGIN = "napari-selfdenoise"
WAIT_MS = 180_000


@pytest.fixture
def fake_time(monkeypatch):
    from napari_selfdenoise.core.methods import nnet
    from napari_selfdenoise.core.training import trainer

    now = {"t": 0.0}
    likelihood = nnet.mixture_nll

    def timed_likelihood(*args, **kwargs):  # a training step, a validation pass, a refit iteration: 1 s
        now["t"] += 1.0
        return likelihood(*args, **kwargs)

    monkeypatch.setattr(trainer, "clock", lambda: now["t"])
    monkeypatch.setattr(nnet, "mixture_nll", timed_likelihood)
    return now


def test_the_noise_calibration_is_shown_and_ends_within_the_time_limit(make_napari_viewer, qtbot, fake_time):
    viewer = make_napari_viewer()
    viewer.add_image(add_noise(fluorescence_image((96, 96), seed=4), "gaussian", sigma=0.1, seed=4), name="cells")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Train & Denoise")
    widget.image_picker.setCurrentText("cells")
    widget.method_picker.setCurrentIndex(widget.method_picker.findData("nnet"))
    for spin, value in ((widget.steps, 1_000_000), (widget.minutes, 0.5), (widget.features, 8), (widget.depth, 1),
                        (widget.patch, 32), (widget.batch, 2)):
        spin.setValue(value)
    states, finishing = [], []
    widget.state_changed.connect(states.append)
    widget.state_changed.connect(lambda state: finishing.append(widget.status.text()) if state == "finishing" else None)
    counted = []  # the bar during the calibration: (done, total, its text, the status line)
    widget.progress.valueChanged.connect(lambda value: counted.append(
        (value, widget.progress.maximum(), widget.progress.format(), widget.status.text()))
        if widget.state == "finishing" else None)
    widget.start()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)
    assert widget.state == "done" and "finishing" in states
    assert "calibrating the noise model" in finishing[0]
    # after its announcement the calibration counts: done/total on the bar and in the status line
    shown = [(done, total, status) for done, total, text, status in counted
             if text.startswith("calibrating the noise model") and total > 0]
    assert shown, counted
    assert all(0 <= done <= total and f"{done}/{total}" in status for done, total, status in shown), shown
    assert any(done > 0 for done, _, _ in shown), shown
    final = widget.run["last_event"]
    assert final.done and final.elapsed <= 30 + 2, f"training and calibration took {final.elapsed:.0f} s of 30 s"
    assert any("shortened to fit the time limit" in note for note in final.extra["notes"])
