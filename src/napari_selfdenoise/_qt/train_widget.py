"""The Train & Denoise dock widget: pick a layer and a method, train in a worker, watch, keep the result."""

from __future__ import annotations

import dataclasses
import time

from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from .._layers import (
    beside_source,
    check_layer,
    guessed_axes,
    network_note,
    placement,
    result_layer_kwargs,
    shape_boxes,
    view_position,
)
from ..core.config import TrainConfig
from ..core.errors import SelfDenoiseError
from ..core.methods import method_choices
from ..core.methods.blind_radius import shared_noise_hint
from ..core.methods.classic import CHOICE as CLASSIC_CHOICE
from ..core.methods.options import MethodChoice, Option
from ..core.training.auto import CHOICE as AUTO_CHOICE
from . import settings
from .common import (
    LayerPicker,
    duration,
    end_worker,
    notify_error,
    on_array,
    on_window_close,
    rate_text,
    scrolling,
    start_job,
)
from .plots import LossPlot, NoisePlot, theme_colors, write_csv, write_png
from .readme_help import methods_link

CLASSIC, AUTO = CLASSIC_CHOICE.name, AUTO_CHOICE.name
CONFIG_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def picker_choices() -> dict[str, MethodChoice]:
    """The method picker's entries by name: auto, every registered method, classic."""
    return {choice.name: choice for choice in (AUTO_CHOICE, *method_choices(), CLASSIC_CHOICE)}


def shown_options(choices: dict[str, MethodChoice]) -> list[Option]:
    """The method options the form shows (those with a label), each once: the ones of a single method
    first, those that many share (the blind radius) last."""
    options = {}
    for choice in choices.values():
        for option in choice.options:
            if option.label is not None:
                options.setdefault(option.name, option)

    def owners(option):
        return sum(option.name in labelled(choice) for choice in choices.values())
    return sorted(options.values(), key=owners)


def labelled(choice: MethodChoice) -> list[str]:
    """The names of a choice's options that the form shows."""
    return [option.name for option in choice.options if option.label is not None]


# The controls remembered between sessions (settings.py): the method, the budget, the advanced options
# (and the method options' controls, by option name).
REMEMBERED = ("method_picker", "steps", "minutes", "device_picker", "patch", "batch", "lr", "seed", "depth",
              "features", "val_fraction", "tta")

# What a run is doing, as the status line and ``state_changed`` say it. ACTIVE ones can be paused.
STATES = ("idle", "starting", "running", "paused", "stopping", "finishing", "predicting", "checking", "cancelled",
          "done", "failed")
ACTIVE = ("starting", "running", "stopping", "finishing", "predicting", "checking")
# Stage messages: the phase they belong to and what the status line calls them.
STAGES = {"predicting": ("predicting", "Denoising the whole image with the best weights"),
          "calibrating": ("predicting", "Calibrating the classical filters"),
          "denoising": ("predicting", "Denoising with the best filter"),
          "checking": ("checking", "Comparing the result with the classical filter (self-supervised score)")}


class TrainWidget(QWidget):
    """Train a self-supervised denoiser on an image layer and add the denoised result as new layers."""

    state_changed = Signal(str)  # one of STATES, whenever it changes

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
        self.viewer.layers.events.removed.connect(self._layer_removed)
        self._layer_changed()
        self._method_changed()
        self._restore_settings()
        self._set_running(False)
        self.destroyed.connect(_stop_on_close(self))
        # Import the engine now: an import inside the worker would hold the GIL and freeze the GUI.
        from ..core import denoiser, jobs  # noqa: F401
        from ..core.methods import classic  # noqa: F401
        from ..core.training import auto, trainer, verdict  # noqa: F401

    # ------------------------------------------------------------------ layout
    def _build(self) -> None:
        colors = theme_colors(self.viewer)
        form = QFormLayout()
        self.image_picker = LayerPicker(self.viewer, ("Image",))
        self.image_picker.setToolTip("The image layer to denoise (it is never changed: results are new layers)")
        self.axes_edit = QLineEdit()
        self.axes_edit.setToolTip("One letter per dimension: S sample, T time, C channel, Z, Y, X")
        self.axes_message = QLabel()
        self.axes_message.setWordWrap(True)
        self.noise_note = QLabel()  # set when the layer's noise looks shared by neighbouring pixels
        self.noise_note.setWordWrap(True)
        self.noise_note.setStyleSheet("color: #d4a72c")  # a suggestion, not an error
        self.method_picker = QComboBox()
        self.choices = picker_choices()
        for name, choice in self.choices.items():
            self.method_picker.addItem(f"{name}: {choice.summary.split(':')[0]}", name)
            self.method_picker.setItemData(self.method_picker.count() - 1, choice.summary,
                                           Qt.ItemDataRole.ToolTipRole)
        self.method_picker.setCurrentIndex(self.method_picker.findData(AUTO))
        self.method_picker.setToolTip("How to denoise: auto races the methods and keeps the best; hover an "
                                      "item for its paper, or see Which method? below")
        self.method_help = QLabel()
        self.method_help.setWordWrap(True)
        self.help_link = methods_link(self)
        self.steps = _spin(1, 10_000_000, 2000, "Training steps (batches); the first budget reached ends training")
        self.minutes = _float_spin(0, 100_000, 0, 1, "Stop after this many minutes of training (0: no limit)")
        self.device_picker = QComboBox()
        from ..core.nn.device import available_devices

        devices = available_devices()
        for device in ["auto"] + devices:  # the data: what TrainConfig takes (and the settings remember)
            self.device_picker.addItem(f"auto ({devices[0]})" if device == "auto" else device, device)
        self.device_picker.setToolTip("Where to train: auto takes a GPU when there is one (only this computer's "
                                      "devices are listed)")
        self.region_picker = LayerPicker(self.viewer, ("Shapes",), none_label="whole image")
        self.region_picker.setToolTip("Train only inside the rectangles of a Shapes layer (the result "
                                      "covers the whole image)")
        self.start_from = None  # path of the model that training continues, or None: a new model
        self.start_label = QLabel("a new model")
        self.start_label.setWordWrap(True)
        self.start_button = QPushButton("Model file...")
        self.start_button.setToolTip("Fine-tune: continue training a saved model (.sdmodel, or a bioimage.io "
                                     ".zip exported by napari-selfdenoise) on this image; its method, network "
                                     "and normalisation are kept")
        self.start_button.clicked.connect(lambda: self.set_start_model())
        self.start_clear = QPushButton("New model")
        self.start_clear.setToolTip("Train a new model from scratch")
        self.start_clear.clicked.connect(lambda: self.set_start_model(None))
        start_row = QHBoxLayout()
        start_row.addWidget(self.start_button)
        start_row.addWidget(self.start_clear)
        for label, widget in (("image", self.image_picker), ("axes", self.axes_edit), ("", self.axes_message),
                              ("", self.noise_note),
                              ("start from", start_row), ("", self.start_label),
                              ("method", self.method_picker), ("", self.method_help), ("", self.help_link),
                              ("steps", self.steps),
                              ("time limit (min)", self.minutes), ("device", self.device_picker),
                              ("train on", self.region_picker)):
            form.addRow(label, widget)

        self.advanced = QCollapsible("Advanced options")
        self.advanced.findChild(QPushButton).setToolTip("Patch, batch, learning rate, seed, network size and "
                                                        "the method's own options")
        advanced = QWidget()
        advanced_form = QFormLayout(advanced)
        # Defaults, tooltips and (where the form has no narrower one) ranges from TrainConfig's fields.
        self.patch = _config_spin("patch", low=16, high=1024, step=16)
        self.batch = _spin(1, 1024, 16, "Patches per step")
        self.lr = _config_float_spin("lr", 6, low=1e-6, high=1.0, step=1e-4)
        self.seed = _config_spin("seed", high=2**31 - 1)  # a Qt spin box holds 32-bit integers
        self.depth = _config_spin("depth")
        self.features = _config_spin("features", low=4, high=256)
        self.val_fraction = _config_float_spin("val_fraction", 2, high=0.5, step=0.05)
        # One control per method option that a method shows (Option.label), built from the Option.
        self.option_controls = {option.name: _option_control(option) for option in shown_options(self.choices)}
        for name, control in self.option_controls.items():
            if not hasattr(self, name):  # widget.mixture, widget.blind_radius, ...
                setattr(self, name, control)
        self.tta = QCheckBox("8x test-time augmentation for the result")
        self.tta.setToolTip("Average the result over 8 flips and rotations: a little better, 8x slower to denoise")
        self.method_rows = {}
        option_rows = [(option.label, self.option_controls[option.name]) for option in shown_options(self.choices)]
        for label, widget in (("patch", self.patch), ("batch", self.batch), ("learning rate", self.lr),
                              ("seed", self.seed), ("depth", self.depth), ("features", self.features),
                              ("validation", self.val_fraction), *option_rows, ("", self.tta)):
            advanced_form.addRow(label, widget)
            self.method_rows[label] = (advanced_form.labelForField(widget), widget)
        self.advanced.addWidget(advanced)

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

    # ------------------------------------------------------------------ remembered settings
    def _remembered(self) -> dict:
        """The controls whose values come back when the widget reopens, by name."""
        return {**{name: getattr(self, name) for name in REMEMBERED}, **self.option_controls}

    def _restore_settings(self) -> None:
        """The last session's method, budget and advanced options; then every change is saved (debounced:
        typing a number writes once)."""
        values = settings.load("train")
        for name, control in self._remembered().items():
            if name in values:
                settings.set_control_value(control, values[name])  # a value that no longer fits stays default
        self.settings_timer = QTimer(self)
        self.settings_timer.setSingleShot(True)
        self.settings_timer.setInterval(300)
        self.settings_timer.timeout.connect(self.save_settings)
        for control in self._remembered().values():
            settings.changed_signal(control).connect(self.settings_timer.start)

    def save_settings(self) -> None:
        if self.start_from is None:  # a model being fine-tuned imposes its method and network: not a choice
            settings.save("train", {name: settings.control_value(c) for name, c in self._remembered().items()})

    # ------------------------------------------------------------------ inputs
    @property
    def method(self) -> str:
        return self.method_picker.currentData()

    def _layer_changed(self, *_) -> None:
        layer = self.image_picker.layer()
        axes = guessed_axes(layer) if layer is not None else ""
        if axes != self.axes_edit.text():
            self.axes_edit.setText(axes)  # textChanged validates them and updates the note
        else:  # same axes, another layer
            self._validate_axes()
            self._update_noise_note()

    def _layer_removed(self, event) -> None:
        """The layer being trained on went away: end the run; a result for it would have no place."""
        source = self.run["source"] if self.run is not None else None
        if self.worker is not None and not self.run.get("cancelled") and source not in self.viewer.layers:
            self.cancel(f"Cancelled: the layer {source.name!r} was removed while training; nothing added.")

    def _update_noise_note(self, *_) -> None:
        """Suggest the blind radius while it is 0 and the layer's noise looks shared by neighbouring pixels."""
        hint = None
        if self.axes_fit and self.option_controls["blind_radius"].value() == 0:
            hint = shared_noise_hint(self.image_picker.layer().data, self.axes_edit.text().strip().upper())
        self.noise_note.setText("Noise shared by neighbouring pixels? Try blind radius 2 (Advanced options)."
                                if hint else "")
        self.noise_note.setToolTip(f"{hint[0].upper()}{hint[1:]}." if hint else "")
        self.noise_note.setVisible(bool(hint))

    def _validate_axes(self, *_) -> bool:
        """Check the axes against the layer as the user types; Train is enabled only when they fit."""
        layer, axes = self.image_picker.layer(), self.axes_edit.text().strip().upper()
        try:
            layout = check_layer(layer, axes)
            if self.start_from is not None:
                self.start_from[1].check_axes(layer.data.shape, axes)
        except SelfDenoiseError as err:
            self.axes_message.setText(str(err))
            self.axes_message.setStyleSheet("color: #e5534b")
            ok = False
        else:
            shape = "x".join(map(str, layer.data.shape))
            text = f"{shape} {layer.data.dtype}: {network_note(layout)}"
            guessed = (layer.metadata or {}).get("axes_guessed") and axes == guessed_axes(layer)
            if guessed:  # a bare TIFF: ZYX or TYX is a guess the user must confirm
                text += f". Axes {axes} guessed from the dimensions: check them (e.g. TYX for a time-lapse)"
            self.axes_message.setText(text)
            self.axes_message.setStyleSheet("color: #d4a72c" if guessed else "")
            ok = True
        self.train_button.setEnabled(ok and self.worker is None)
        self.axes_fit = ok
        return ok

    def _method_changed(self, *_) -> None:
        method = self.method
        choice = self.choices[method]
        self.method_help.setText(choice.summary)
        for option in shown_options(self.choices):
            for widget in self.method_rows[option.label]:
                widget.setVisible(option.name in labelled(choice))
        trains = method != CLASSIC
        # The classic filters are calibrated, not trained: only the blind radius of the advanced options applies.
        for widget in (self.steps, self.minutes, self.device_picker, self.region_picker, self.patch, self.batch,
                       self.lr, self.seed, self.depth, self.features, self.val_fraction, self.tta):
            widget.setEnabled(trains)
        for widget in (self.start_button, self.start_clear):
            widget.setEnabled(trains)

    def set_start_model(self, path=False) -> bool:
        """Continue training the model at ``path`` (asked for when not given); ``None``: a new model.
        The method, depth and features then come from the model and cannot be changed."""
        if path is False:
            path, _ = QFileDialog.getOpenFileName(self, "Start from model", "",
                                                  "Models (*.sdmodel *.zip);;All files (*)")
            if not path:
                return False
        if path is None:
            self.start_from = None
            self.start_label.setText("a new model")
            for widget in (self.method_picker, self.depth, self.features):
                widget.setEnabled(True)
            self._validate_axes()
            return True
        from ..core.denoiser import Denoiser
        from ..core.errors import UntrustedCodeError

        try:
            try:
                model = Denoiser.load(path)
            except UntrustedCodeError:
                model = None  # foreign TorchScript: refused as foreign, never run
            if model is None or not model.trainable:
                raise SelfDenoiseError(f"{path} is a foreign bioimage.io model (prediction only); only models "
                                       "trained with napari-selfdenoise can be fine-tuned")
        except SelfDenoiseError as err:
            notify_error(err)
            return False
        from pathlib import Path

        self.start_from = (str(path), model)
        config = model.config
        self.method_picker.setCurrentIndex(self.method_picker.findData(config.method))
        self.depth.setValue(config.depth)
        self.features.setValue(config.features)
        for widget in (self.method_picker, self.depth, self.features):
            widget.setEnabled(False)
        self.start_label.setText(f"{Path(path).name}: {model.method.title}, {model.state.step} steps on "
                                 f"{config.axes}; training continues from it")
        self._validate_axes()
        return True

    def config(self, axes: str):
        """The widget's settings as the engine's one configuration object."""
        from ..core.config import TrainConfig

        options = {name: settings.control_value(self.option_controls[name])
                   for name in labelled(self.choices[self.method])}
        return TrainConfig(
            method=self.method, axes=axes, steps=self.steps.value(),
            time_limit=self.minutes.value() * 60 or None, patch=self.patch.value(), batch=self.batch.value(),
            lr=self.lr.value(), seed=self.seed.value(), depth=self.depth.value(), features=self.features.value(),
            val_fraction=self.val_fraction.value(), device=self.device_picker.currentData(),
            curve_every=25, method_options=options,
        )

    # -------------------------------------------------------------- run control
    def start(self) -> None:
        """Train (or calibrate) on the chosen layer in a worker thread."""
        if self.worker is not None:
            return
        try:
            job, run = self._prepare()
        except SelfDenoiseError as err:
            notify_error(err)
            return
        self.run, self.first_preview_seconds = run, None
        if self.denoiser is not None:  # fine-tuning continues a model's counters: progress is this run's
            run.update(step0=self.denoiser.state.step, elapsed0=self.denoiser.state.elapsed,
                       time_limit=self.denoiser.config.time_limit)
        self.compare_button.setChecked(False)  # a new run: back to the user's own view
        self.loss_plot.clear_data()
        self.loss_plot.set_note("No loss: classic calibrates filters, it does not train (see Scores and "
                                "Noise level)" if self.method == CLASSIC else "")
        self.noise_plot.clear_data()
        self.losses = {"step": [], "train": [], "val_step": [], "val": []}
        self.paused = False
        self.classic_button.setVisible(False)
        self.status.setStyleSheet("")
        self.score_table.setRowCount(0)
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        self._set_phase("starting", "Starting...")
        self.worker = start_job(job, self._on_message, self._on_result, self._on_error, self._on_finished)
        on_window_close(self, _stop_on_close(self))
        self.clock.start()
        self._set_running(True)

    def _prepare(self):
        from ..core.jobs import auto_job, box_regions, classic_job, preview_region, train_job
        from ..core.training.verdict import checked_job

        layer = self.image_picker.layer()
        axes = self.axes_edit.text().strip().upper()
        check_layer(layer, axes)
        run = {"source": layer, "axes": axes, "method": self.method, "started": time.monotonic(),
               "preview_layer": None}
        if self.method == CLASSIC:
            self.denoiser = None
            radius = self.option_controls["blind_radius"].value()
            return on_array(layer.data, lambda image: classic_job(image, axes, blind_radius=radius)), run
        from ..core.denoiser import Denoiser

        if self.start_from is not None:
            # a fresh copy from the file for every run: pressing Train twice does not tune twice
            self.denoiser = Denoiser.load(self.start_from[0])
            wanted = self.config(axes).to_dict()
            changes = {k: wanted[k] for k in ("steps", "time_limit", "patch", "batch", "seed", "val_fraction",
                                              "device", "curve_every")}
            if wanted["lr"] != self.denoiser.config.lr:
                changes["lr"] = wanted["lr"]
            self.denoiser.prepare_fine_tuning(axes, **changes)
            self.denoiser.check_axes(layer.data.shape, axes)
            run.update(method=self.denoiser.config.method, fine_tuned=True)
        else:
            self.denoiser = Denoiser(config=self.config(axes))
        shape = layer.data.shape
        regions = None
        shapes = self.region_picker.layer()
        if shapes is not None:
            if len(shapes.data) == 0:
                raise SelfDenoiseError(f"the Shapes layer {shapes.name!r} is empty; draw rectangles on it "
                                       "or train on the whole image")
            # a region smaller than a patch cannot be trained on: say so in the region's terms
            yx = [shape[axes.index(a)] for a in "YX"]
            regions = box_regions(shape_boxes(shapes, layer, axes), shape, axes,
                                  minimum=min(self.patch.value(), *yx))
        preview = preview_region(shape, axes, view_position(layer, self.viewer), depth=self.denoiser.config.patch_z)
        denoiser, tta = self.denoiser, self.tta.isChecked()
        if run["method"] == AUTO:  # the race compares with the classical filter itself
            return on_array(layer.data, lambda image: auto_job(denoiser, image, regions, preview, tta)), run
        # a trained result is checked against the classical filter before it is handed back
        return on_array(layer.data, lambda image: checked_job(
            train_job(denoiser, image, regions, preview, tta), denoiser, image, axes)), run

    def set_paused(self, paused: bool) -> None:
        if self.worker is None:
            return
        self.pause_button.setText("Resume" if paused else "Pause")
        self.paused = paused
        if paused:
            self.worker.pause()
        else:
            self.worker.resume()
        self._render_status()

    def stop(self) -> None:
        """End training after the current step; the best weights so far denoise the image. Pressed while
        the result is being computed (or for the classic method), it cancels without adding layers."""
        if self.worker is None:
            return
        if self.pause_button.isChecked():
            self.pause_button.setChecked(False)
        training = self.denoiser is not None and self.run.get("stage") is None
        if training:
            self.denoiser.stop()
            self._set_phase("stopping", "Stopping after this step; then denoising with the best weights...")
        else:
            self.cancel()

    def cancel(self, why: str = "Cancelled.") -> None:
        """End the run now; nothing is added, and no late message overwrites ``why``."""
        if self.worker is None:
            return
        self.run["cancelled"] = True
        if self.denoiser is not None:
            self.denoiser.stop()
        self.worker.quit()
        self._remove_preview()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self._set_phase("cancelled", why)

    # ------------------------------------------------------------ status line
    def _set_phase(self, phase: str, detail: str) -> None:
        """What the run is doing (one of STATES) and its details; shown at once, and kept: a message
        that arrives later (a step in flight) cannot overwrite a pause, a stop or a cancellation."""
        if phase != self.phase:
            self.phase, self.phase_started = phase, time.monotonic()
        self.detail = detail
        self._render_status()

    def _render_status(self) -> None:
        detail = self.detail
        if self.phase == "finishing":  # no progress of its own: show that it is alive, and for how long
            detail += f" {duration(time.monotonic() - self.phase_started)} so far (once, after training)"
        paused = self.paused and self.phase in ACTIVE
        self.status.setText(f"Paused (press Resume) · {detail}" if paused else detail)
        state = "paused" if paused else self.phase
        if state != self.state:
            self.state = state
            self.state_changed.emit(state)

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

    # -------------------------------------------------- messages from the worker
    def _on_message(self, message) -> None:
        if self.closed:
            return
        from ..core.jobs import Preview
        from ..core.steps import Stage
        from ..core.training.trainer import ProgressEvent

        if self.run is None or self.run.get("cancelled"):
            return  # sent before the cancellation reached the worker
        if isinstance(message, ProgressEvent):
            self._on_progress(message)
        elif isinstance(message, Preview):
            self._on_preview(message)
        elif isinstance(message, Stage) and message.name != "previewing":
            self.run["stage"] = message.name
            self.progress.setRange(0, message.total)
            self.progress.setValue(message.done)
            self.progress.setFormat(f"{message.name} %p%")
            phase, what = STAGES.get(message.name, ("predicting", message.name.capitalize()))
            self._set_phase(phase, f"{what}: {message.done}/{message.total}")

    def _on_progress(self, event) -> None:
        if "stage" in event.extra:  # a finishing step after the last step (N-net's calibration)
            self.run["stage"] = event.extra["stage"]
            self.progress.setRange(0, 0)  # busy: the finishing step reports no progress of its own
            self._set_phase("finishing", f"Training ended at step {event.step}; {event.extra['stage']}...")
            return
        self.run["last_event"] = event
        if "scores" in event.extra:
            self._show_scores(event.extra["scores"])
        if event.train_loss != event.train_loss:  # NaN: auto's first event (the classical filter) has no loss
            return
        losses = self.losses
        losses["step"].append(event.step)
        losses["train"].append(event.train_loss)
        if event.val_loss is not None:
            losses["val_step"].append(event.step)
            losses["val"].append(event.val_loss)
        self.loss_plot.set_data("training", losses["step"], losses["train"])
        self.loss_plot.set_data("validation", losses["val_step"], losses["val"])
        if "noise_curve" in event.extra:
            self.noise_plot.show_curve(event.extra["noise_curve"])
        if self.phase == "finishing":  # the final event, after the finishing step: training is over
            return
        fraction, left = training_progress(event, self.run)
        self.progress.setRange(0, 1000)
        self.progress.setValue(int(1000 * fraction))
        self.progress.setFormat("training %p%")
        budget = f"/{event.max_steps}" if event.max_steps else ""
        candidate = f" ({event.extra['candidate']})" if "candidate" in event.extra else ""
        detail = (f"Step {event.step}{budget}{candidate} · loss {event.train_loss:.4g} · "
                  f"{rate_text(event.patches_per_second)} · {duration(left)} left")
        if self.phase == "stopping":
            self._set_phase("stopping", f"Stopping after this step; then denoising with the best weights · {detail}")
        else:
            self._set_phase("running", detail)

    def _show_scores(self, rows: list[dict]) -> None:
        """The score table: one row per candidate (auto) or the result and the classical filter."""
        table = self.score_table
        table.setRowCount(len(rows))
        best = min((r["score"] for r in rows if r.get("score") is not None), default=None)
        for number, row in enumerate(rows):
            score = "-" if row.get("score") is None else f"{row['score']:.4g}"
            if row.get("stderr"):
                score += f" ± {row['stderr']:.1g}"
            if row.get("score") is not None and best and row["score"] > best:
                score += f" (+{100 * (row['score'] / best - 1):.0f} %)"
            steps = "calibrated" if row["method"] == CLASSIC else str(row.get("steps", ""))
            for column, text in enumerate((row["method"], score, steps, row.get("status", ""))):
                table.setItem(number, column, QTableWidgetItem(text))

    def _on_preview(self, preview) -> None:
        run = self.run
        if self.first_preview_seconds is None:
            self.first_preview_seconds = time.monotonic() - run["started"]
        source, data = run["source"], preview.outputs["denoised"]
        layer = run["preview_layer"]
        if layer is None or layer not in self.viewer.layers:
            name = f"{source.name} preview ({run['method']})"
            run["preview_layer"] = self.viewer.add_image(
                data, name=name, **placement(source, preview.region), colormap=source.colormap.name,
                contrast_limits=tuple(source.contrast_limits), rgb=bool(getattr(source, "rgb", False)))
        else:
            layer.data = data

    def _on_result(self, result) -> None:
        run = self.run
        if self.closed or run is None or run.get("cancelled"):
            return
        self._remove_preview()
        source = run["source"]
        if source not in self.viewer.layers:  # removed while the result was being computed
            self._set_phase("cancelled", f"Cancelled: the layer {source.name!r} was removed; nothing added.")
            return
        text, warning, method, label = self._result_summary(result)
        # the denoised layer last: on top, selected, not hidden under the noise-std map
        for output in sorted(result.outputs, key=lambda name: name == "denoised"):
            self.result_layer = self.viewer.add_image(result.outputs[output],
                                                      **result_layer_kwargs(source, output, method, run["axes"], label))
        self.classic_button.setVisible(warning)
        self.status.setStyleSheet("color: #d4a72c" if warning else "")
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.progress.setFormat("done")
        self._set_phase("done", text)

    def _result_summary(self, result) -> tuple[str, bool, str, str]:
        """The status line, whether it warns (the result is not better than the classical filter), the
        method that made the result, and the result layers' label: method, steps and time, so that
        several results can be told apart."""
        run = self.run
        took = duration(time.monotonic() - run["started"])
        calibration, race, verdict = (result.extra.get(k) for k in ("calibration", "auto", "verdict"))
        if calibration is not None:
            self.noise_plot.show_curve(result.extra["noise_curve"])
            text = (f"Done: {calibration.denoiser} ({calibration.parameter_name} = "
                    f"{calibration.parameter:.3g}) had the lowest self-supervised loss.")
            return text, False, CLASSIC, f"classic {calibration.denoiser}, {took}"
        steps = self.denoiser.state.step
        how = "stopped early; best weights used" if result.stopped else "done"
        if race is not None:
            self._show_scores([row.to_dict() for row in race.scores])
            estimate = f" Estimated quality: {race.estimate.text()}." if race.estimate is not None else ""
            winner = race.winner if race.winner == CLASSIC else f"{race.winner} ({steps} steps)"
            text = (f"Auto {how}: {winner} scored best of {len(race.scores)} (Scores tab).{estimate}"
                    + (" Save the model to reuse it." if self.denoiser.trained else ""))
            return text, False, race.winner, f"auto: {race.winner}, {steps} steps, {took}"
        method = run["method"] + (" fine-tuned" if run.get("fine_tuned") else "")
        text = f"Training {how} after {steps} steps ({duration(self.denoiser.state.elapsed)})."
        if verdict is not None:
            self._show_scores([{"method": method, "score": verdict.score, "steps": steps, "status": "this result"},
                               {"method": CLASSIC, "score": verdict.classic_score,
                                "status": "better" if verdict.worse else ""}])
            text += f" {verdict.text()}"
        if verdict is None or verdict.good:
            text += " Save the model to reuse it."
        return text, verdict is not None and not verdict.good, run["method"], f"{method}, {steps} steps, {took}"

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

    def _on_error(self, err) -> None:
        notify_error(err)
        if self.closed:
            return
        self._remove_preview()
        self._set_phase("failed", f"Failed: {err}")

    def _on_finished(self) -> None:
        self.worker = None
        self.clock.stop()
        if self.closed:
            return
        if self.run is not None and self.run.get("cancelled"):
            self._remove_preview()
        self.paused = False
        self._set_running(False)
        if self.phase in ACTIVE:  # ended without a result or an error (e.g. the worker was quit)
            self._set_phase("cancelled", "Cancelled.")

    def _remove_preview(self) -> None:
        layer = self.run.get("preview_layer") if self.run else None
        if layer is not None and layer in self.viewer.layers:
            self.viewer.layers.remove(layer)
        if self.run:
            self.run["preview_layer"] = None


def training_progress(event, run: dict) -> tuple[float, float | None]:
    """This run's progress in [0, 1] and the seconds left, by whichever budget ends it first: steps
    or the time limit (a fine-tuning run continues a model's counters, so both count from the run's start)."""
    step, elapsed = event.step - run.get("step0", 0), event.elapsed - run.get("elapsed0", 0.0)
    fractions, lefts = [], []
    if event.max_steps:
        total = max(event.max_steps - run.get("step0", 0), 1)
        fraction = min(1.0, step / total)
        fractions.append(fraction)
        if fraction > 0:
            lefts.append(elapsed * (1 - fraction) / fraction)
    limit = run.get("time_limit")
    if limit:
        fractions.append(min(1.0, elapsed / limit))
        lefts.append(max(0.0, limit - elapsed))
    return (max(fractions) if fractions else 0.0), (min(lefts) if lefts else None)


def _stop_on_close(widget):
    """When the viewer closes (or the widget goes away) end its run and wait for the worker thread;
    no new layers are added."""
    def stop(*_):
        widget.closed = True
        if widget.denoiser is not None:
            widget.denoiser.stop()
        if widget.worker is not None:
            end_worker(widget.worker)
    return stop


def _config_spin(name: str, low: int | None = None, high: int | None = None, step: int = 1) -> QSpinBox:
    """A spin box for the int field ``name`` of TrainConfig: its default and help; its range unless the
    form's own (``low``, ``high``) is narrower."""
    f = CONFIG_FIELDS[name]
    low = f.metadata["low"] if low is None else max(low, f.metadata["low"])
    high = f.metadata["high"] if high is None else min(high, f.metadata["high"] or high)
    return _spin(low, high, f.default, _tip(f.metadata["help"]), step)


def _config_float_spin(name: str, decimals: int, low: float | None = None, high: float | None = None,
                       step: float = 1.0) -> QDoubleSpinBox:
    """A spin box for the float field ``name`` of TrainConfig (see ``_config_spin``)."""
    f = CONFIG_FIELDS[name]
    low = f.metadata["low"] if low is None else max(low, f.metadata["low"])
    high = f.metadata["high"] if high is None else min(high, f.metadata["high"] or high)
    return _float_spin(low, high, f.default, decimals, _tip(f.metadata["help"]), step)


def _option_control(option: Option) -> QWidget:
    """The control of a method option: a check box, a spin box in its range, or a list of its choices."""
    tip = _tip(option.help)
    if option.kind is bool:
        box = QCheckBox()
        box.setChecked(option.default)
        box.setToolTip(tip)
        return box
    if option.choices is not None:
        box = QComboBox()
        for choice in option.choices:
            box.addItem(choice, choice)
        box.setCurrentIndex(box.findData(option.default))
        box.setToolTip(tip)
        return box
    if option.kind is int:
        low = 0 if option.low is None else int(option.low) + option.low_open
        return _spin(low, 2**31 - 1 if option.high is None else int(option.high), option.default, tip,
                     int(option.step or 1))
    low = 0.0 if option.low is None else option.low + (10 ** -option.decimals if option.low_open else 0)
    return _float_spin(low, 1e6 if option.high is None else option.high, option.default, option.decimals, tip,
                       option.step or 1.0)


def _tip(help_text: str) -> str:
    """A help phrase (lower case, from the engine) as a tooltip sentence."""
    return help_text[:1].upper() + help_text[1:]


def _spin(low: int, high: int, value: int, tip: str, step: int = 1) -> QSpinBox:
    box = QSpinBox()
    box.setRange(low, high)
    box.setSingleStep(step)
    box.setValue(value)
    box.setToolTip(tip)
    return box


def _float_spin(low: float, high: float, value: float, decimals: int, tip: str, step: float = 1.0) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setDecimals(decimals)
    box.setRange(low, high)
    box.setSingleStep(step)
    box.setValue(value)
    box.setToolTip(tip)
    return box
