"""The Train widget's form: the layer, axes, start model, method, budget and advanced options, remembered
between sessions and read back as one ``TrainConfig``. The controls come from the engine's metadata: the
method picker and the method options' controls from the registry (``MethodChoice``, ``Option``), the
spin boxes' defaults, tooltips and ranges from ``TrainConfig``'s fields."""

from __future__ import annotations

import dataclasses

from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)
from superqt import QCollapsible

from .._layers import check_layer, guessed_axes, network_note
from ..core.config import TrainConfig
from ..core.errors import SelfDenoiseError
from ..core.methods import method_choices
from ..core.methods.blind_radius import shared_noise_hint
from ..core.methods.classic import CHOICE as CLASSIC_CHOICE
from ..core.methods.options import MethodChoice, Option
from ..core.training.auto import CHOICE as AUTO_CHOICE
from . import settings
from .common import LayerPicker, notify_error
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
REMEMBERED = ("method_picker", "steps", "minutes", "device_picker", "patch", "batch", "lr", "lr_decay", "seed",
              "depth", "features", "val_fraction", "tta")


class TrainForm:
    """The form part of ``TrainWidget`` (a mixin: it builds and reads controls on the widget itself)."""

    def _build_form(self) -> QFormLayout:
        """The main form: layer, axes, start model, method, budget, device, training region."""
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
        return form

    def _build_advanced(self) -> None:
        """The collapsible advanced options: patch, batch, rate, seed, network size, the method options."""
        self.advanced = QCollapsible("Advanced options")
        self.advanced.findChild(QPushButton).setToolTip("Patch, batch, learning rate, seed, network size and "
                                                        "the method's own options")
        advanced = QWidget()
        advanced_form = QFormLayout(advanced)
        # Defaults, tooltips and (where the form has no narrower one) ranges from TrainConfig's fields.
        self.patch = _config_spin("patch", low=16, high=1024, step=16)
        self.batch = _spin(1, 1024, 16, "Patches per step")
        self.lr = _config_float_spin("lr", 6, low=1e-6, high=1.0, step=1e-4)
        self.lr_decay = _config_float_spin("lr_decay", 2, step=0.1)
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
                              ("rate decay", self.lr_decay), ("seed", self.seed), ("depth", self.depth),
                              ("features", self.features),
                              ("validation", self.val_fraction), *option_rows, ("", self.tta)):
            advanced_form.addRow(label, widget)
            self.method_rows[label] = (advanced_form.labelForField(widget), widget)
        self.advanced.addWidget(advanced)

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

    def _update_noise_note(self, *_) -> None:
        """Suggest the blind radius while it is 0 and the layer's noise looks shared by neighbouring pixels
        (auto: say that it uses one itself)."""
        hint = None
        if self.axes_fit and self.option_controls["blind_radius"].value() == 0:
            hint = shared_noise_hint(self.image_picker.layer().data, self.axes_edit.text().strip().upper())
        advice = ("auto will use blind radius 2 (Advanced options: set one to choose)." if self.method == AUTO
                  else "Try blind radius 2 (Advanced options).")
        self.noise_note.setText(f"Noise shared by neighbouring pixels? {advice}" if hint else "")
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
                       self.lr, self.lr_decay, self.seed, self.depth, self.features, self.val_fraction, self.tta):
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
            lr=self.lr.value(), lr_decay=self.lr_decay.value(), seed=self.seed.value(), depth=self.depth.value(),
            features=self.features.value(),
            val_fraction=self.val_fraction.value(), device=self.device_picker.currentData(),
            curve_every=25, method_options=options,
        )


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
