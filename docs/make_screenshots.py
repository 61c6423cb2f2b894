"""Take the README's screenshots of the real widgets in a 1280x720 window (a laptop screen).

Run under Xvfb: `xvfb-run -a -s "-screen 0 1280x720x24" python docs/make_screenshots.py` (13 minutes on a busy 2-core machine:
each run has a time limit, --minutes). On the plugin's 2D sample image, through the Train & Denoise widget, it
1. calibrates the classic filter, trains N-net and shoots the window while it trains (its noise-level
   plot, the live preview): train-during.png;
2. runs auto and shoots its score table (the Scores tab): train-scores.png;
3. shows the results side by side in napari's grid mode, named by method and steps: train-compare.png;
4. applies the saved N-net model with the Apply model widget, its training curves shown: apply-model.png.
Result layers are found by their metadata (method, output), not by name: names carry steps and time.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent / "images"
PLUGIN = "napari-selfdenoise"
NOISY = "cells 2D (noisy)"
WINDOW = (1280, 720)


def pump(seconds: float) -> None:
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.01)


def results(viewer, output: str = "denoised") -> list:
    """The result layers of one kind ("denoised", "noise_std"), oldest first."""
    return [layer for layer in viewer.layers if (layer.metadata or {}).get("output") == output]


def train(widget, method: str, steps: int, minutes: float, small: bool, during=None) -> None:
    """Run ``method`` in the Train widget until it ends (``steps`` or ``minutes``, whichever comes first);
    ``during(widget)`` is called once, half way (after the noise curve's first point)."""
    widget.image_picker.setCurrentText(NOISY)
    widget.method_picker.setCurrentIndex(widget.method_picker.findData(method))
    widget.steps.setValue(steps)
    widget.minutes.setValue(minutes)
    # a smaller network than the default, for many steps in a few minutes on a laptop CPU; tests: tiny
    sizes = (8, 1, 32, 2) if small else (16, 2, 64, 8)
    for spin, value in zip((widget.features, widget.depth, widget.patch, widget.batch), sizes):
        spin.setValue(value)
    widget.train_button.click()
    while widget.worker is not None:
        pump(0.05)
        curve_shown = widget.noise_plot.data("measured (noisy - denoised)")[0]
        if during is not None and widget.state == "running" and widget.progress.value() >= 500 and curve_shown:
            pump(0.6)  # the plots redraw on a timer
            during(widget)
            during = None
    if during is not None:  # a run too short to be caught half way (tests): after it, then
        during(widget)


def take_screenshots(viewer, out: Path, steps: int = 300, minutes: float = 1.5, small: bool = False) -> list[Path]:
    """Drive the widgets in ``viewer`` and write the screenshots into ``out``; returns their paths."""
    from qtpy.QtCore import Qt

    out.mkdir(parents=True, exist_ok=True)
    shots = []

    def shoot(name: str) -> None:
        pump(1)
        shots.append(out / name)
        viewer.screenshot(shots[-1], canvas_only=False)

    viewer.window._qt_window.resize(*WINDOW)
    viewer.open_sample(PLUGIN, "noisy_cells_2d")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Train & Denoise")
    pump(1)

    def noise_tab(widget):
        widget.plots.setCurrentWidget(widget.noise_plot)
        widget.scroll_area.ensureWidgetVisible(widget.plots)
        shoot("train-during.png")

    train(widget, "classic", steps, minutes, small)
    train(widget, "nnet", steps, minutes, small, during=noise_tab)
    with tempfile.TemporaryDirectory() as tmp:
        model = widget.denoiser.save(Path(tmp) / "cells-nnet.sdmodel")  # no toast over the image
        for layer in results(viewer, "noise_std"):
            layer.visible = False  # the comparison shows denoised images
        train(widget, "auto", steps, minutes, small)
        widget.plots.setCurrentWidget(widget.score_table)
        widget.scroll_area.ensureWidgetVisible(widget.plots)
        shoot("train-scores.png")

        viewer.window.remove_dock_widget("all")  # the canvas and the layer names get the room
        for layer in results(viewer, "noise_std"):
            layer.visible = False
        grid = viewer.canvas.grid if hasattr(viewer, "canvas") else viewer.grid  # napari >= 0.9 moved it
        viewer.layers[NOISY.replace("noisy", "clean")].visible = True  # the reference (sample data only)
        grid.enabled = True  # noisy and each result side by side, their names in the layer list
        viewer.layers.selection.active = results(viewer)[-1]
        window = viewer.window._qt_window
        layer_list = viewer.window._qt_viewer.dockLayerList
        window.resizeDocks([layer_list], [560], Qt.Orientation.Horizontal)  # whole layer names
        pump(0.5)
        viewer.reset_view()  # the grid's tiles fill the canvas, which the docks' changes resized
        shoot("train-compare.png")
        grid.enabled = False

        for layer in results(viewer) + results(viewer, "noise_std"):
            viewer.layers.remove(layer)
        viewer.layers[NOISY.replace("noisy", "clean")].visible = False
        window.resizeDocks([layer_list], [300], Qt.Orientation.Horizontal)
        _, apply = viewer.window.add_plugin_dock_widget(PLUGIN, "Apply model")
        apply.load_model(model)
        apply.image_picker.setCurrentText(NOISY)
        apply.apply_button.click()
        while apply.worker is not None:
            pump(0.05)
        for layer in results(viewer, "noise_std"):
            layer.visible = False  # show the denoised result
        apply.curves_button.setChecked(True)  # the model file's loss history and its noise curve
        while apply.curve_worker is not None:
            pump(0.05)
        pump(0.5)
        viewer.reset_view()
        shoot("apply-model.png")
    return shots


def main(argv=None) -> None:
    import napari

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    from napari_selfdenoise._qt import settings

    parser.add_argument("--steps", type=int, default=300, help="training steps of N-net and of auto's race")
    parser.add_argument("--minutes", type=float, default=1.5, help="time limit of each (0: none)")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    viewer = napari.Viewer()
    with tempfile.TemporaryDirectory() as tmp:
        # the widgets' defaults, not this user's remembered settings (and theirs stay as they are)
        settings.settings_file = lambda: Path(tmp) / "widgets.json"
        try:
            for path in take_screenshots(viewer, args.out, args.steps, args.minutes):
                print(path)
        finally:
            viewer.close()


if __name__ == "__main__":
    main()
