"""The Train & Denoise dock widget: pick a layer and a method, train in a worker, watch, keep the result.

Three parts, one concern each: the form (train_form.TrainForm: the controls, remembered settings, the
TrainConfig they make), the run controller (train_run.TrainRun: the worker, its messages, the status line)
and this module: the layout, the buttons, the plots (plots.py) and what is done with a result (save,
export, compare, curves)."""

from __future__ import annotations

import time

from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from .._layers import beside_source
from ..core.errors import SelfDenoiseError
from .common import notify_error, scrolling
from .plots import LossPlot, NoisePlot, theme_colors, write_csv, write_png
from .train_form import CLASSIC, TrainForm
from .train_run import TrainRun, stop_on_close


class TrainWidget(TrainForm, TrainRun, QWidget):
    """Train a self-supervised denoiser on an image layer and add the denoised result as new layers."""

    state_changed = Signal(str)  # one of train_run.STATES, whenever it changes

    # ------------------------------------------------------------------ layout
    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.denoiser = None
        self.worker = None
        self.axes_fit = False  # the axes fit the chosen layer (set by _validate_axes)
        self.run = None  # what the running job works on: source layer, axes, method, ...
        self.result_layer = None  # the newest denoised layer (what Before | after compares)
        self.compared = None  # while Before | after is on: each layer's visibility and the grid before it
        self.first_preview_seconds = None  # from pressing Train to the first preview (benchmark B4)
        self.closed = False
        self.state = self.phase = "idle"
        self.paused, self.detail, self.phase_started = False, "", time.monotonic()
        self.clock = QTimer(self)  # refreshes the status line of a stage that reports no progress
        self.clock.setInterval(1000)
        self.clock.timeout.connect(self._render_status)
        self._build()
        self.image_picker.currentTextChanged.connect(self._layer_changed)
        self.axes_edit.textChanged.connect(self._validate_axes)
        self.axes_edit.textChanged.connect(self._update_noise_note)  # after _validate_axes: uses axes_fit
        self.method_picker.currentIndexChanged.connect(self._method_changed)
        self.option_controls["blind_radius"].valueChanged.connect(self._update_noise_note)
        self.method_picker.currentIndexChanged.connect(self._update_noise_note)  # auto's own note
        self.viewer.layers.events.removed.connect(self._layer_removed)
        self._layer_changed()
        self._method_changed()
        self._restore_settings()
        self._set_running(False)
        self.destroyed.connect(stop_on_close(self))
        # Import the engine now: an import inside the worker would hold the GIL and freeze the GUI. torch's
        # optimizers import torch._dynamo (with sympy: ~800 modules, ~1 s) on their first use: in the worker
        # that froze the viewer twice for ~0.3 s after Train (BENCHMARKS.md, B6)
        import torch._dynamo  # noqa: F401

        from ..core import denoiser, jobs  # noqa: F401
        from ..core.methods import classic  # noqa: F401
        from ..core.training import auto, trainer, verdict  # noqa: F401

    def _build(self) -> None:
        colors = theme_colors(self.viewer)
        form = self._build_form()
        self._build_advanced()

        buttons = QHBoxLayout()
        self.train_button = QPushButton("Train")
        self.pause_button = QPushButton("Pause")
        self.pause_button.setCheckable(True)
        self.stop_button = QPushButton("Stop")
        self.save_button = QPushButton("Save model...")
        self.train_button.setToolTip("Train the method on the layer in the background; the result is added as "
                                     "a new layer")
        self.pause_button.setToolTip("Hold training (the time limit waits too); press again to resume")
        self.stop_button.setToolTip("End training after this step and denoise with the best weights so far "
                                    "(classic, or the final denoising: cancel)")
        self.save_button.setToolTip("Save the trained model with its curves (.sdmodel) for Apply model, the "
                                    "command line and Python")
        self.export_button = QPushButton("Export to bioimage.io...")
        self.export_button.setToolTip("Write the trained model as a BioImage Model Zoo package")
        for button in (self.train_button, self.pause_button, self.stop_button):
            buttons.addWidget(button)
        export_row = QHBoxLayout()  # a second row: three buttons a row fit a narrow dock
        export_row.addWidget(self.save_button)
        export_row.addWidget(self.export_button)
        self.export_button.clicked.connect(lambda: self.export_bioimageio())
        self.classic_button = QPushButton("Use the classical filter instead")
        self.classic_button.setToolTip("Denoise this layer with the classical filter whose parameter the "
                                       "self-supervised loss chooses (seconds): it scored better than this result")
        self.classic_button.clicked.connect(self.use_classic)
        self.classic_button.setVisible(False)
        buttons.addWidget(self.classic_button)
        self.train_button.clicked.connect(self.start)
        self.pause_button.toggled.connect(self.set_paused)
        self.stop_button.clicked.connect(self.stop)
        self.save_button.clicked.connect(lambda: self.save_model())

        self.progress = QProgressBar()
        self.status = QLabel("Pick an image layer and a method, then press Train.")
        self.status.setWordWrap(True)
        self.loss_plot = LossPlot(colors)
        self.noise_plot = NoisePlot(colors)

        self.plots = QTabWidget()  # one plot at a time: a laptop screen has no room for both
        self.plots.addTab(self.loss_plot, "Loss")
        self.plots.setTabToolTip(0, "Training (running mean) and validation loss against step")
        self.plots.addTab(self.noise_plot, "Noise level")
        self.plots.setTabToolTip(1, "The noise std against the signal, measured on the result (N-net also "
                                    "predicts it)")
        self.score_table = QTableWidget(0, 4)
        self.score_table.setHorizontalHeaderLabels(["method", "score (lower is better)", "steps", "status"])
        self.score_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.score_table.horizontalHeader().setStretchLastSection(True)
        self.score_table.verticalHeader().setVisible(False)
        self.score_table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.score_table.setToolTip("The self-supervised score of each result: the error of its prediction of "
                                    "held-out pixels hidden from it (Noise2Self), on the same pixels for all. "
                                    "It ranks results like the true error, without a clean image")
        self.plots.addTab(self.score_table, "Scores")
        self.plots.setTabToolTip(2, "Each result's self-supervised score (auto: every candidate); lower is "
                                    "better")

        self.curves_button = QPushButton("Export curves...")
        self.curves_button.setToolTip("Save the loss and noise-level curves as a CSV table (.csv), or the shown "
                                      "plot as an image (.png)")
        self.curves_button.clicked.connect(lambda: self.export_curves())
        self.compare_button = QPushButton("Before | after")
        self.compare_button.setCheckable(True)
        self.compare_button.setToolTip("Show the input and the newest result side by side (napari's grid, one "
                                       "zoom for both); press again to go back")
        self.compare_button.toggled.connect(self.show_before_after)
        curves_row = QHBoxLayout()
        curves_row.addWidget(self.compare_button)
        curves_row.addStretch()
        curves_row.addWidget(self.curves_button)

        content = QWidget()
        layout = QVBoxLayout(content)
        layout.addLayout(form)
        layout.addWidget(self.advanced)
        layout.addLayout(buttons)
        layout.addLayout(export_row)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.plots)
        layout.addLayout(curves_row)
        layout.addStretch()
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        self.scroll_area = scrolling(content)
        self.scroll_area.setMinimumHeight(260)  # docked with Apply model on 720 px: both stay usable
        outer.addWidget(self.scroll_area)

    # ------------------------------------------------------------------ results
    def save_model(self, path=None):
        """Save the trained model (with its training history) to a model file."""
        if self.denoiser is None or not self.denoiser.trained:
            notify_error(SelfDenoiseError("train a model first (the classic method has no model to save)"))
            return None
        if path is None:
            source = self.run["source"].name if self.run else "model"
            name = f"{source}-{self.denoiser.config.method}.sdmodel"
            path, _ = QFileDialog.getSaveFileName(self, "Save model", beside_source(self._source(), name),
                                                  "Self-denoise model (*.sdmodel)")
            if not path:
                return None
        from napari.utils.notifications import show_info

        try:
            written = self.denoiser.save(path)
        except (SelfDenoiseError, OSError) as err:
            notify_error(err)
            return None
        show_info(f"Model saved to {written}")
        return written

    def export_bioimageio(self, path=None, metadata=None):
        """Export the trained model as a bioimage.io package (a dialog asks for the metadata and file)."""
        from .export_dialog import export_to_bioimageio

        if self.denoiser is None or not self.denoiser.trained:
            notify_error(SelfDenoiseError("train a model first (the classic method has no model to export)"))
            return None
        source = self.run["source"].name if self.run else "model"
        default = beside_source(self._source(), f"{source}-{self.denoiser.config.method}.zip")
        return export_to_bioimageio(self, self.denoiser, default, path, metadata)

    def _source(self):
        """The layer of the last run (where its outputs are best saved), else the chosen one."""
        return self.run["source"] if self.run is not None else self.image_picker.layer()

    def export_curves(self, path=None):
        """Write the loss and noise-level curves as a CSV table (a path ending in .csv: every curve of both
        plots, one row per point), or the shown plot as a PNG image (.png); atomically."""
        from pathlib import Path

        from napari.utils.notifications import show_info

        from ..core.io.atomic import atomic_write

        if path is None:
            source = self._source()
            method = self.run["method"] if self.run else self.method
            name = f"{source.name if source is not None else 'training'}-{method}-curves.csv"
            path, chosen = QFileDialog.getSaveFileName(self, "Export curves", beside_source(source, name),
                                                       "CSV table (*.csv);;PNG image of the shown plot (*.png)")
            if not path:
                return None
            if Path(path).suffix.lower() not in (".csv", ".png"):
                path += ".png" if "png" in chosen else ".csv"
        path = Path(path)
        shown = self.noise_plot if self.plots.currentWidget() is self.noise_plot else self.loss_plot
        try:
            with atomic_write(path) as tmp:
                if path.suffix.lower() == ".png":
                    write_png(tmp, shown)
                else:
                    write_csv(tmp, (self.loss_plot, self.noise_plot))
        except OSError as err:
            notify_error(err)
            return None
        show_info(f"Curves saved to {path}")
        return path

    def _set_running(self, running: bool) -> None:
        self.train_button.setEnabled(not running)
        if not running:
            self._validate_axes()
        self.pause_button.setEnabled(running and self.method != CLASSIC)
        self.stop_button.setEnabled(running)
        self.save_button.setEnabled(not running and self.denoiser is not None and self.denoiser.trained)
        self.export_button.setEnabled(self.save_button.isEnabled())
        for widget in (self.image_picker, self.axes_edit, self.start_button, self.start_clear):
            widget.setEnabled(not running)
        self.method_picker.setEnabled(not running and self.start_from is None)
        if not running:
            self.pause_button.setChecked(False)

    def show_before_after(self, on: bool) -> None:
        """On: only the last run's input and its newest result shown, side by side in napari's grid. Off:
        every layer's visibility and the grid as they were."""
        grid = self.viewer.canvas.grid if hasattr(self.viewer, "canvas") else self.viewer.grid  # napari >= 0.9
        if on and self.compared is None:
            pair = (self.run["source"] if self.run else None, self.result_layer)
            if not all(layer is not None and layer in self.viewer.layers for layer in pair):
                notify_error(SelfDenoiseError("nothing to compare yet: train first (and keep the input and "
                                              "result layers)"))
                self.compare_button.setChecked(False)
                return
            self.compared = ({layer: layer.visible for layer in self.viewer.layers}, grid.enabled)
            for layer in self.viewer.layers:
                layer.visible = layer in pair
            grid.enabled = True
        elif not on and self.compared is not None:
            visible, grid_was_on = self.compared
            self.compared = None
            for layer, shown in visible.items():
                if layer in self.viewer.layers:
                    layer.visible = shown
            grid.enabled = grid_was_on

    def use_classic(self) -> None:
        """Denoise the last run's layer with the self-calibrated classical filter (the better result)."""
        if self.worker is not None:
            return
        if self.run is not None and self.run["source"] in self.viewer.layers:
            self.image_picker.setCurrentText(self.run["source"].name)
        self.method_picker.setCurrentIndex(self.method_picker.findData(CLASSIC))
        self.start()
