"""Pieces both dock widgets use: layer pickers, the worker that runs an engine job, messages."""

from __future__ import annotations

import datetime
import math

from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import QComboBox


class LayerPicker(QComboBox):
    """Layers of the given kinds, by name, refreshed whenever the layer list or a name changes."""

    def __init__(self, viewer, kinds: tuple[str, ...] = ("Image",), none_label: str | None = None, parent=None):
        super().__init__(parent)
        self.viewer, self.kinds, self.none_label = viewer, kinds, none_label
        events = viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.connect(self.refresh)
        events.inserted.connect(self._watch_name)
        for layer in viewer.layers:
            layer.events.name.connect(self.refresh)
        self.refresh()

    def _watch_name(self, event) -> None:
        event.value.events.name.connect(self.refresh)

    def refresh(self, *_) -> None:
        current = self.currentText()
        layers = [layer for layer in self.viewer.layers if layer.__class__.__name__ in self.kinds
                  and not (layer.metadata or {}).get("preview")]  # a live preview is no input
        names = [layer.name for layer in layers]
        if self.none_label:
            names.insert(0, self.none_label)
        self.blockSignals(True)
        self.clear()
        self.addItems(names)
        if current in names:
            self.setCurrentText(current)
        elif layers and self.none_label is None:
            # the newest visible layer: a sample's hidden "(clean)" reference is not what to denoise
            visible = [layer for layer in layers if layer.visible] or layers
            self.setCurrentText(visible[-1].name)
        self.blockSignals(False)
        if self.currentText() != current:
            self.currentTextChanged.emit(self.currentText())

    def layer(self):
        name = self.currentText()
        return self.viewer.layers[name] if name and name in self.viewer.layers else None


def start_job(job, on_message, on_result, on_error, on_finished):
    """Run an engine job (a generator, see ``core.jobs``) in a napari worker thread.

    Messages arrive on the main thread through Qt signals; the worker never touches layers or widgets.
    """
    from napari.qt.threading import GeneratorWorker

    def run():
        return (yield from job)

    worker = GeneratorWorker(run)
    worker.yielded.connect(on_message)
    worker.returned.connect(on_result)
    worker.errored.connect(on_error)
    worker.finished.connect(on_finished)
    worker.start()
    return worker


class _CloseWatcher(QObject):
    def __init__(self, callback, parent):
        super().__init__(parent)
        self.callback = callback

    def eventFilter(self, watched, event):  # Qt's name
        if event.type() == QEvent.Type.Close:
            self.callback()
        return False  # napari closes the window as usual


def on_window_close(widget, callback) -> None:
    """Call ``callback`` when the window that ``widget`` is docked in is about to close, before napari
    tears its Qt objects down (a worker still running then would emit into deleted signals: a
    RuntimeWarning on stderr). Call it once docked (e.g. when a run starts); once per window."""
    window = widget.window()
    if window is not widget and not window.findChild(_CloseWatcher, f"close-{id(widget)}"):
        watcher = _CloseWatcher(callback, window)
        watcher.setObjectName(f"close-{id(widget)}")
        window.installEventFilter(watcher)


def end_worker(worker, msecs: int = 60_000) -> None:
    """Ask ``worker`` to quit and wait until its thread is done (at most one step of the job)."""
    from qtpy.QtCore import QThreadPool

    worker.quit()
    QThreadPool.globalInstance().waitForDone(msecs)


def on_array(data, make_job):
    """Run the job on a layer's data, inside the worker: read into memory when it fits easily, else
    kept lazy (dask, zarr, memory-map): training then reads patches and prediction streams blocks."""
    import numpy as np

    from ..core.data.lazy import LAZY_THRESHOLD, as_array, nbytes

    return (yield from make_job(as_array(data) if nbytes(data) > LAZY_THRESHOLD else np.asarray(data)))


def notify_error(err: Exception) -> None:
    """Our own errors say what to do: show them as they are; anything else with its type."""
    from napari.utils.notifications import show_error

    from ..core.errors import SelfDenoiseError

    show_error(str(err) if isinstance(err, SelfDenoiseError) else f"{type(err).__name__}: {err}")


def rate_text(patches_per_second: float) -> str:
    """Training speed that stays informative when slow (a 3D network on a busy CPU: under 1 patch/s)."""
    if patches_per_second >= 10:
        return f"{patches_per_second:.0f} patches/s"
    if patches_per_second >= 0.5:
        return f"{patches_per_second:.1f} patches/s"
    if patches_per_second > 0:
        return f"{1 / patches_per_second:.0f} s/patch"
    return "measuring speed"


def scrolling(content):
    """``content`` in a vertical scroll area: a dock widget taller than a laptop screen stays usable."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QFrame, QScrollArea

    for combo in content.findChildren(QComboBox):  # long layer names must not widen the dock
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(12)
    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)  # the content follows the width
    area.setWidget(content)
    return area


def duration(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds) or seconds < 0:
        return "--:--"
    return str(datetime.timedelta(seconds=round(seconds)))
