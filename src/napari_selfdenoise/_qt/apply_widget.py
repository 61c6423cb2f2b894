"""The Apply model dock widget: load a saved model and denoise any fitting image layer with it."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .._layers import check_layer, guessed_axes, result_layer_kwargs
from ..core.errors import SelfDenoiseError, UntrustedCodeError
from . import settings
from .common import LayerPicker, end_worker, notify_error, on_array, on_window_close, scrolling, start_job
from .plots import LossPlot, NoisePlot, theme_colors

# The controls remembered between sessions (settings.py); the last model's folder is too (Browse opens there).
REMEMBERED = ("tile", "tta")


class ApplyWidget(QWidget):
    """Denoise an image layer with a model file trained earlier (in napari, the CLI or Python)."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.denoiser = None
        self.worker = None
        self.curve_worker = None  # computes the noise-level curve of a loaded model's kept training crop
        self.run = None
        self.closed = False
        self._build()
        self._restore_settings()
        self.image_picker.currentTextChanged.connect(self._layer_changed)
        self.axes_edit.textChanged.connect(self._validate)
        self._layer_changed()
        self.destroyed.connect(_quit_on_close(self))

    def _build(self) -> None:
        self.model_path = QLineEdit()
        self.model_path.setPlaceholderText("a .sdmodel file or a bioimage.io package (.zip)")
        self.model_path.setToolTip("The model to apply: type a path and press Enter, or Browse")
        self.model_path.returnPressed.connect(lambda: self.load_model(self.model_path.text()))
        browse = QPushButton("Browse...")
        browse.setToolTip("Choose a model file (.sdmodel) or a bioimage.io package (.zip)")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.model_path)
        row.addWidget(browse)
        self.model_info = QLabel("No model loaded.")
        self.model_info.setWordWrap(True)
        self.image_picker = LayerPicker(self.viewer, ("Image",))
        self.image_picker.setToolTip("The image layer to denoise (it is never changed: the result is a new layer)")
        self.axes_edit = QLineEdit()
        self.axes_edit.setToolTip("One letter per dimension: S sample, T time, C channel, Z, Y, X")
        self.axes_message = QLabel()
        self.axes_message.setWordWrap(True)
        self.tta = QCheckBox("8x test-time augmentation (slower, a little better)")
        self.tta.setToolTip("Average the result over 8 flips and rotations: a little better, 8x slower")
        self.tile = QSpinBox()
        self.tile.setRange(0, 4096)
        self.tile.setSingleStep(64)
        self.tile.setSpecialValueText("auto")
        self.tile.setToolTip("Tile edge in Y and X for prediction (smaller tiles use less memory)")
        form = QFormLayout()
        form.addRow("model", row)
        form.addRow("", self.model_info)
        form.addRow("image", self.image_picker)
        form.addRow("axes", self.axes_edit)
        form.addRow("", self.axes_message)
        form.addRow("tile", self.tile)
        form.addRow("", self.tta)
        self.apply_button = QPushButton("Denoise")
        self.apply_button.setToolTip("Denoise the layer with the model in the background; the result is added "
                                     "as a new layer")
        self.apply_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop denoising now; nothing is added")
        self.cancel_button.clicked.connect(self.cancel)
        self.export_button = QPushButton("Export to bioimage.io...")
        self.export_button.setToolTip("Write the loaded model as a BioImage Model Zoo package")
        self.export_button.clicked.connect(lambda: self.export_bioimageio())
        buttons = QHBoxLayout()
        buttons.addWidget(self.apply_button)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.export_button)
        self.progress = QProgressBar()
        self.status = QLabel()
        self.status.setWordWrap(True)
        content = QWidget()
        layout = QVBoxLayout(content)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self._build_curves())
        layout.addStretch()
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        area = scrolling(content)  # fits a laptop screen docked under the Train widget
        area.setMinimumHeight(min(content.sizeHint().height(), 230))
        outer.addWidget(area)
        self._set_running(False)

    def _build_curves(self) -> QWidget:
        """A collapsible section with the loaded model's curves: its loss history, and the noise level
        measured on its kept training crop (with N-net's predicted one)."""
        self.curves_button = QPushButton("Show training curves")
        self.curves_button.setCheckable(True)
        self.curves_button.setToolTip("Show the loaded model's loss curves (from its file) and its noise level "
                                      "on the training crop the file keeps")
        self.curves_button.toggled.connect(self._show_curves)
        colors = theme_colors(self.viewer)
        self.loss_plot, self.noise_plot = LossPlot(colors), NoisePlot(colors)
        self.curves = QWidget()
        plots = QVBoxLayout(self.curves)
        plots.setContentsMargins(0, 0, 0, 0)
        plots.addWidget(self.loss_plot)
        plots.addWidget(self.noise_plot)
        self.curves.hide()
        section = QWidget()
        column = QVBoxLayout(section)
        column.setContentsMargins(0, 0, 0, 0)
        column.addWidget(self.curves_button)
        column.addWidget(self.curves)
        self._load_curves()
        return section

    def _load_curves(self) -> None:
        """Put the loaded model's history in the loss plot; the button is enabled when there is one."""
        history = self.denoiser.history if self.denoiser is not None and self.denoiser.trainable else {}
        steps = list(history.get("step", []))
        self.loss_plot.set_data("training", steps, history.get("train_loss", []))
        self.loss_plot.set_data("validation", steps, history.get("val_loss", []))
        self.noise_plot.clear_data()
        self.noise_plot.set_note("")
        self.noise_curve_of = None  # the model whose noise curve the plot shows (or is being computed)
        self.curves_button.setEnabled(bool(steps))
        if not steps:
            self.curves_button.setChecked(False)
        elif self.curves_button.isChecked():
            self._show_curves(True)

    def _show_curves(self, shown: bool) -> None:
        self.curves.setVisible(shown)
        self.curves_button.setText("Hide training curves" if shown else "Show training curves")
        if shown and self.noise_curve_of is not self.denoiser:
            self._start_noise_curve()

    def _start_noise_curve(self) -> None:
        """The noise-level curve of the model's kept training crop, computed in a worker (a prediction)."""
        from ..core.jobs import predict_job
        from ..core.noise import noise_curve

        denoiser, sample = self.denoiser, self.denoiser.sample
        self.noise_curve_of = denoiser
        if sample is None:
            self.noise_plot.set_note("this model file keeps no training crop")
            return
        self.noise_plot.set_note("measuring on the training crop the model file keeps...")

        def job():
            result = yield from predict_job(denoiser, sample, "SCYX" if sample.ndim == 4 else "SCZYX")
            return denoiser, noise_curve(sample, result.outputs["denoised"], result.outputs.get("noise_std"))

        if self.curve_worker is not None:
            self.curve_worker.quit()
        self.curve_worker = start_job(job(), lambda _: None, self._on_noise_curve, self._on_noise_curve_error,
                                      lambda: None)

    def _on_noise_curve(self, result) -> None:
        denoiser, curve = result
        if self.closed or denoiser is not self.denoiser:
            return  # another model was loaded meanwhile
        self.curve_worker = None
        self.noise_plot.set_note("")
        self.noise_plot.show_curve(curve)

    def _on_noise_curve_error(self, err) -> None:
        if not self.closed:
            self.curve_worker = None
            self.noise_plot.set_note(f"no noise curve: {err}")

    def _restore_settings(self) -> None:
        """The last session's tile and TTA choices and model folder; then every change is saved
        (debounced: typing a number writes once)."""
        values = settings.load("apply")
        for name in REMEMBERED:
            if name in values:
                settings.set_control_value(getattr(self, name), values[name])  # a value that no longer fits: default
        folder = values.get("model_folder")
        self.model_folder = folder if isinstance(folder, str) else ""
        self.settings_timer = QTimer(self)
        self.settings_timer.setSingleShot(True)
        self.settings_timer.setInterval(300)
        self.settings_timer.timeout.connect(self.save_settings)
        for name in REMEMBERED:
            settings.changed_signal(getattr(self, name)).connect(self.settings_timer.start)

    def save_settings(self) -> None:
        values = {name: settings.control_value(getattr(self, name)) for name in REMEMBERED}
        settings.save("apply", {**values, "model_folder": self.model_folder})

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open model", self.model_folder, "Models (*.sdmodel *.zip);;Self-denoise model (*.sdmodel);;"
            "bioimage.io package (*.zip);;All files (*)")
        if path:
            self.load_model(path)

    def load_model(self, path) -> bool:
        """Load a model file (safetensors weights and a JSON header: nothing in it is executed) or a
        bioimage.io package (ours in full; a foreign one for prediction). A foreign package's TorchScript
        weights are code: they load only when the user, asked first, says they trust its author."""
        from ..core.denoiser import Denoiser

        try:
            try:
                self.denoiser = Denoiser.load(path)
            except UntrustedCodeError as refusal:
                if not self._trust(refusal):
                    raise SelfDenoiseError(f"{Path(path).name} was not loaded: its code is not trusted") from None
                self.denoiser = Denoiser.load(path, trust_code=True)
        except SelfDenoiseError as err:
            self.denoiser = None
            self.model_info.setText("No model loaded.")
            notify_error(err)
            self._load_curves()
            self._validate()
            return False
        self.model_path.setText(str(path))
        self.model_folder = str(Path(path).resolve().parent)
        self.save_settings()
        self._load_curves()
        if self.denoiser.trainable:
            arch = self.denoiser.architecture
            self.model_info.setText(
                f"{self.denoiser.title} · trained on axes {self.denoiser.axes} · {arch['dims']}D, "
                f"{arch['in_channels']} channel(s) · {self.denoiser.state.step} steps · {Path(path).name}")
        else:
            channels = self.denoiser.in_channels or "any number of"
            self.model_info.setText(
                f"{self.denoiser.name} · bioimage.io package (prediction only) · axes {self.denoiser.axes} · "
                f"{self.denoiser.dims}D, {channels} channel(s) · {Path(path).name}")
        self._validate()
        return True

    def _trust(self, refusal: UntrustedCodeError) -> bool:
        """Ask whether to run a package's TorchScript code (No is the default)."""
        name = Path(str(refusal.package)).name if refusal.package else "This package"
        answer = QMessageBox.question(
            self, "Run this package's code?",
            f"{name} holds TorchScript weights. TorchScript weights are a program written by the package's "
            "author; it runs with your permissions and can read, write or send your files. Run it only if "
            f"you trust {refusal.author}.\n\n(It runs in a separate process with bounded memory.)",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

    def export_bioimageio(self, path=None, metadata=None):
        """Export the loaded model as a bioimage.io package (a dialog asks for the metadata and file)."""
        from .export_dialog import export_to_bioimageio

        source = Path(self.model_path.text())
        default = "" if not self.model_path.text() else str(
            source.with_name(f"{source.stem}-bioimageio.zip") if source.suffix.lower() == ".zip"
            else source.with_suffix(".zip"))
        return export_to_bioimageio(self, self.denoiser, default, path, metadata)

    def _layer_changed(self, *_) -> None:
        layer = self.image_picker.layer()
        self.axes_edit.setText(guessed_axes(layer) if layer is not None else "")
        self._validate()

    def _validate(self, *_) -> bool:
        """Check the layer and its axes against the model; Denoise is enabled only when they fit."""
        layer, axes = self.image_picker.layer(), self.axes_edit.text().strip().upper()
        try:
            check_layer(layer, axes)
            if self.denoiser is None:
                raise SelfDenoiseError("load a model file first")
            self.denoiser.check_axes(layer.data.shape, axes)
        except SelfDenoiseError as err:
            self.axes_message.setText(str(err))
            self.axes_message.setStyleSheet("color: #e5534b")
            ok = False
        else:
            self.axes_message.setText(f"{'x'.join(map(str, layer.data.shape))} {layer.data.dtype}: fits the model")
            self.axes_message.setStyleSheet("")
            ok = True
        self.apply_button.setEnabled(ok and self.worker is None)
        self.export_button.setEnabled(self.worker is None and self.denoiser is not None
                                      and self.denoiser.trainable)
        return ok

    def start(self) -> None:
        from ..core.jobs import predict_job

        if self.worker is not None:
            return
        if not self._validate():
            notify_error(SelfDenoiseError(self.axes_message.text()))
            return
        layer, axes = self.image_picker.layer(), self.axes_edit.text().strip().upper()
        denoiser, tta, tile = self.denoiser, self.tta.isChecked(), self.tile.value() or None
        self.run = {"source": layer, "axes": axes, "method": denoiser.method_name, "cancelled": False}
        job = on_array(layer.data, lambda image: predict_job(denoiser, image, axes, tta=tta, tile=tile))
        self.status.setText("Denoising...")
        self.worker = start_job(job, self._on_message, self._on_result, self._on_error, self._on_finished)
        on_window_close(self, _quit_on_close(self))
        self._set_running(True)

    def cancel(self) -> None:
        if self.worker is not None:
            self.run["cancelled"] = True
            self.worker.quit()
            self.progress.setValue(0)
            self.status.setText("Cancelled.")

    def _set_running(self, running: bool) -> None:
        self.cancel_button.setEnabled(running)
        for widget in (self.image_picker, self.axes_edit, self.model_path, self.tta, self.tile):
            widget.setEnabled(not running)
        if not running:
            self._validate()
        else:
            self.apply_button.setEnabled(False)
            self.export_button.setEnabled(False)

    def _on_message(self, stage) -> None:
        if not self.closed and not self.run["cancelled"]:  # a late tile must not overwrite "Cancelled."
            self.progress.setRange(0, stage.total)
            self.progress.setValue(stage.done)
            self.status.setText(f"Denoising: tile {stage.done}/{stage.total}")

    def _on_result(self, result) -> None:
        run = self.run
        if self.closed or run["cancelled"]:
            return
        if run["source"] not in self.viewer.layers:
            self.status.setText(f"Cancelled: the layer {run['source'].name!r} was removed; nothing added.")
            return
        for output in sorted(result.outputs, key=lambda name: name == "denoised"):  # denoised on top
            self.viewer.add_image(result.outputs[output],
                                  **result_layer_kwargs(run["source"], output, run["method"], run["axes"]))
        self.status.setText("Done.")

    def _on_error(self, err) -> None:
        notify_error(err)
        if not self.closed:
            self.status.setText(f"Failed: {err}")

    def _on_finished(self) -> None:
        self.worker = None
        if not self.closed:
            self._set_running(False)


def _quit_on_close(widget):
    def quit_run(*_):
        widget.closed = True
        for worker in (widget.worker, widget.curve_worker):
            if worker is not None:
                end_worker(worker)
    return quit_run
