"""Take the README's screenshots of the real widgets (run under Xvfb: `xvfb-run -a python docs/make_screenshots.py`).

Trains N-net on the plugin's 2D sample image through the Train & Denoise widget, shoots the window while it
trains (loss and noise plots, live preview) and after (result layers), then applies the saved model with the
Apply model widget.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import napari
from qtpy.QtWidgets import QApplication

HERE = Path(__file__).parent / "images"


def pump(app, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.01)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--during-step", type=int, default=250, help="shoot the 'during' picture at this step")
    args = parser.parse_args()
    HERE.mkdir(exist_ok=True)
    viewer = napari.Viewer()
    app = QApplication.instance()
    viewer.window._qt_window.resize(1600, 1050)
    viewer.open_sample("napari-selfdenoise", "noisy_cells_2d")
    _, widget = viewer.window.add_plugin_dock_widget("napari-selfdenoise", "Train & Denoise")
    widget.image_picker.setCurrentText("cells 2D (noisy)")
    widget.method_picker.setCurrentIndex(widget.method_picker.findData("nnet"))
    widget.steps.setValue(args.steps)
    viewer.scene.camera.zoom *= 1.0
    pump(app, 1)
    widget.train_button.click()
    shot = False
    while widget.worker is not None:
        pump(app, 0.05)
        if not shot and widget.losses["step"] and widget.losses["step"][-1] >= args.during_step:
            pump(app, 0.5)
            viewer.screenshot(HERE / "train-during.png", canvas_only=False)
            shot = True
    pump(app, 1)
    viewer.layers["cells 2D (clean)"].visible = True  # noisy, clean, denoised and noise std side by side
    viewer.grid.enabled = True
    viewer.layers.selection.active = viewer.layers["cells 2D (noisy) denoised (nnet)"]
    pump(app, 1)
    viewer.screenshot(HERE / "train-after.png", canvas_only=False)

    viewer.grid.enabled = False
    with tempfile.TemporaryDirectory() as tmp:
        path = widget.save_model(Path(tmp) / "cells-nnet.sdmodel")
        viewer.window.remove_dock_widget("all")
        for name in [layer.name for layer in viewer.layers if "denoised" in layer.name or "noise std" in layer.name]:
            viewer.layers.remove(name)
        _, apply = viewer.window.add_plugin_dock_widget("napari-selfdenoise", "Apply model")
        apply.load_model(path)
        apply.image_picker.setCurrentText("cells 2D (noisy)")
        apply.apply_button.click()
        viewer.layers["cells 2D (clean)"].visible = False
        while apply.worker is not None:
            pump(app, 0.05)
        viewer.layers["cells 2D (noisy) noise std"].visible = False  # show the denoised result
        pump(app, 1)
        viewer.screenshot(HERE / "apply-model.png", canvas_only=False)
    viewer.close()


if __name__ == "__main__":
    main()
