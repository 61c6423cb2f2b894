"""The widgets' remembered settings: one small JSON file per user (the user's config folder), so the last
method, budget and advanced options come back when a widget reopens. A broken file is ignored with a
warning: defaults are used and the next change writes a good file."""

from __future__ import annotations

import json
from pathlib import Path

from qtpy.QtWidgets import QAbstractButton, QComboBox, QDoubleSpinBox, QSpinBox

from ..core.io.atomic import atomic_write


def settings_file() -> Path:
    """Where the settings live: e.g. ~/.config/napari-selfdenoise/widgets.json on Linux."""
    try:
        from platformdirs import user_config_path
    except ImportError:  # platformdirs comes with napari; without it, the XDG default
        return Path.home() / ".config" / "napari-selfdenoise" / "widgets.json"
    return user_config_path("napari-selfdenoise", appauthor=False) / "widgets.json"


def load(widget_name: str) -> dict:
    """The saved settings of one widget ({} when there are none or the file is broken)."""
    path = settings_file()
    if not path.exists():
        return {}
    try:
        values = json.loads(path.read_text(encoding="utf-8"))[widget_name] if path.stat().st_size else {}
        if not isinstance(values, dict):
            raise TypeError(f"{widget_name!r} is not a table of settings")
    except KeyError:
        return {}
    except (OSError, ValueError, TypeError, UnicodeDecodeError) as err:
        _warn(f"ignoring the saved widget settings in {path} (defaults used): {err}")
        return {}
    return values


def save(widget_name: str, values: dict) -> None:
    """Replace one widget's settings (the other widgets' are kept); the file is written atomically."""
    path = settings_file()
    try:
        everything = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        if not isinstance(everything, dict):
            everything = {}
    except (OSError, ValueError, UnicodeDecodeError):
        everything = {}  # broken: load() said so; a good file replaces it
    everything[widget_name] = values
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as tmp:
            tmp.write_text(json.dumps(everything, indent=1, sort_keys=True), encoding="utf-8")
    except OSError as err:  # a read-only home: the widget still works, it just does not remember
        _warn(f"cannot save the widget settings to {path}: {err}")


def control_value(control):
    """The value of a spin box, check box or combo box (its item's data when it has one, e.g. the
    method's name, else its text)."""
    if isinstance(control, QSpinBox | QDoubleSpinBox):
        return control.value()
    if isinstance(control, QAbstractButton):
        return control.isChecked()
    data = control.currentData()
    return data if isinstance(data, str) else control.currentText()


def set_control_value(control, value) -> bool:
    """Restore one control; False when ``value`` does not fit it (wrong type, an item no longer listed)."""
    if isinstance(control, QSpinBox) and isinstance(value, int) and not isinstance(value, bool):
        control.setValue(value)
    elif isinstance(control, QDoubleSpinBox) and isinstance(value, int | float) and not isinstance(value, bool):
        control.setValue(float(value))
    elif isinstance(control, QAbstractButton) and isinstance(value, bool):
        control.setChecked(value)
    elif isinstance(control, QComboBox) and isinstance(value, str) and max(control.findData(value),
                                                                          control.findText(value)) >= 0:
        control.setCurrentIndex(max(control.findData(value), control.findText(value)))
    else:
        return False
    return True


def changed_signal(control):
    if isinstance(control, QSpinBox | QDoubleSpinBox):
        return control.valueChanged
    if isinstance(control, QAbstractButton):
        return control.toggled
    return control.currentIndexChanged


def _warn(message: str) -> None:
    from napari.utils.notifications import show_warning

    show_warning(message)
