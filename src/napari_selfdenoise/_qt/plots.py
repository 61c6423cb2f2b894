"""Live plots (pyqtgraph), coloured like the current napari theme and redrawn a few times a second at most."""

from __future__ import annotations

import pyqtgraph as pg
from qtpy.QtCore import QTimer

REDRAW_MS = 250  # at most 4 redraws a second, however fast the worker sends data


def theme_colors(viewer) -> dict[str, str]:
    from napari.utils.theme import get_theme

    theme = get_theme(viewer.theme)
    return {key: getattr(theme, key).as_hex() for key in ("canvas", "background", "foreground", "text",
                                                          "primary", "highlight", "warning")}


class LivePlot(pg.PlotWidget):
    """A plot whose curves take new data at any rate and are redrawn on a timer."""

    def __init__(self, title: str, x_label: str, y_label: str, colors: dict[str, str], parent=None):
        super().__init__(parent=parent, background=colors["background"])
        self.setMinimumHeight(170)
        self.colors = colors
        item = self.getPlotItem()
        item.setTitle(title, color=colors["text"], size="10pt")
        for side, label in (("bottom", x_label), ("left", y_label)):
            axis = item.getAxis(side)
            axis.setLabel(label, color=colors["text"])
            axis.setPen(colors["foreground"])
            axis.setTextPen(colors["text"])
            axis.enableAutoSIPrefix(False)  # no "(x0.001)" in the labels: show the data's own numbers
        item.showGrid(x=True, y=True, alpha=0.2)
        self.legend = item.addLegend(offset=(-10, 10), labelTextColor=colors["text"])
        self.curves: dict[str, pg.PlotDataItem] = {}
        self.pending: dict[str, tuple[list, list]] = {}
        self.timer = QTimer(self)
        self.timer.setInterval(REDRAW_MS)
        self.timer.timeout.connect(self.redraw)
        self.timer.start()

    def add_curve(self, name: str, color: str, dashed: bool = False, symbol: str | None = None) -> None:
        from qtpy.QtCore import Qt

        pen = pg.mkPen(color, width=2, style=Qt.PenStyle.DashLine if dashed else Qt.PenStyle.SolidLine)
        self.curves[name] = self.getPlotItem().plot([], [], pen=pen, name=name, symbol=symbol,
                                                   symbolSize=5, symbolBrush=color, symbolPen=None)

    def set_data(self, name: str, x, y) -> None:
        self.pending[name] = (list(x), list(y))

    def data(self, name: str) -> tuple[list, list]:
        """What the curve shows once redrawn (pending data included), for tests and exports."""
        if name in self.pending:
            return self.pending[name]
        x, y = self.curves[name].getData()
        return ([] if x is None else list(x)), ([] if y is None else list(y))

    def clear_data(self) -> None:
        for name in self.curves:
            self.pending[name] = ([], [])

    def redraw(self) -> None:
        pending, self.pending = self.pending, {}
        for name, (x, y) in pending.items():
            self.curves[name].setData(x, y)


class LossPlot(LivePlot):
    def __init__(self, colors: dict[str, str], parent=None):
        super().__init__("Loss", "step", "loss", colors, parent)
        self.add_curve("training", colors["highlight"])
        self.add_curve("validation", colors["warning"], symbol="o")


class NoisePlot(LivePlot):
    def __init__(self, colors: dict[str, str], parent=None):
        super().__init__("Noise level", "signal (denoised)", "noise std", colors, parent)
        self.add_curve("measured (noisy - denoised)", colors["highlight"], symbol="o")
        self.add_curve("predicted (N-net)", colors["warning"], dashed=True)

    def show_curve(self, curve) -> None:
        self.set_data("measured (noisy - denoised)", curve.signal, curve.std)
        self.set_data("predicted (N-net)", curve.signal if curve.predicted_std else [], curve.predicted_std or [])
