"""Live plots (pyqtgraph), coloured like the current napari theme and redrawn a few times a second at most."""

from __future__ import annotations

import math

import pyqtgraph as pg
from qtpy.QtCore import QTimer

REDRAW_MS = 250  # at most 4 redraws a second, however fast the worker sends data
# A curve flatter than this (its span relative to its size) is shown in a range of at least this
# relative span: autoscaled, rounding noise in a flat loss would fill the plot as waves.
FLAT = 0.02


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
        self.colors, self.title = colors, title
        item = self.getPlotItem()
        item.setTitle(title, color=colors["text"], size="10pt")
        for side, label in (("bottom", x_label), ("left", y_label)):
            axis = item.getAxis(side)
            axis.setLabel(label, color=colors["text"])
            axis.setPen(colors["foreground"])
            axis.setTextPen(colors["text"])
            axis.enableAutoSIPrefix(False)  # no "(x0.001)" in the labels: show the data's own numbers
        item.showGrid(x=True, y=True, alpha=0.2)
        # the legend goes under the plot, in the plot's own layout: never over the curves
        self.legend = pg.LegendItem(colCount=2, labelTextColor=colors["text"])
        item.layout.addItem(self.legend, 4, 1)
        self.note = pg.TextItem("", color=colors["text"], anchor=(0.5, 0.5))  # why a plot is empty
        self.note.setParentItem(item.getViewBox())
        item.getViewBox().sigResized.connect(self._place_note)
        self.curves: dict[str, pg.PlotDataItem] = {}
        self.symbols: dict[str, str | None] = {}
        self.pending: dict[str, tuple[list, list]] = {}
        self.timer = QTimer(self)
        self.timer.setInterval(REDRAW_MS)
        self.timer.timeout.connect(self.redraw)
        self.timer.start()

    def add_curve(self, name: str, color: str, dashed: bool = False, symbol: str | None = None) -> None:
        from qtpy.QtCore import Qt

        pen = pg.mkPen(color, width=2, style=Qt.PenStyle.DashLine if dashed else Qt.PenStyle.SolidLine)
        self.curves[name] = self.getPlotItem().plot([], [], pen=pen, symbol=symbol,
                                                   symbolSize=5, symbolBrush=color, symbolPen=None)
        self.symbols[name] = symbol
        self.legend.addItem(self.curves[name], name)

    def set_in_legend(self, name: str, shown: bool) -> None:
        """List a curve in the legend, or not (a curve this method does not have)."""
        listed = name in self.legend_names()
        if shown and not listed:
            self.legend.addItem(self.curves[name], name)
        elif listed and not shown:
            self.legend.removeItem(self.curves[name])

    def legend_names(self) -> list[str]:
        return [label.text for _, label in self.legend.items]

    def set_note(self, text: str) -> None:
        """A line in the middle of the plot that says why it is empty ("" removes it)."""
        self.note.setText(text)
        self._place_note()

    def note_text(self) -> str:
        return self.note.toPlainText()

    def _place_note(self, *_) -> None:
        box = self.getPlotItem().getViewBox().boundingRect()
        self.note.setTextWidth(max(box.width() - 20, 50))
        self.note.setPos(box.center())

    def set_data(self, name: str, x, y) -> None:
        self.pending[name] = (list(x), list(y))

    def data(self, name: str) -> tuple[list, list]:
        """What the curve shows once redrawn (pending data included), for tests and exports."""
        if name in self.pending:
            return self.pending[name]
        x, y = self.curves[name].getData()
        return ([] if x is None else list(x)), ([] if y is None else list(y))

    def rows(self):
        """Every point of every curve as (plot, curve, x, y): what a CSV export writes."""
        for name in self.curves:
            for x, y in zip(*self.data(name)):
                yield self.title, name, float(x), float(y)

    def clear_data(self) -> None:
        for name in self.curves:
            self.pending[name] = ([], [])

    def redraw(self) -> None:
        pending, self.pending = self.pending, {}
        for name, (x, y) in pending.items():
            # a single point has no line to draw: a marker shows it
            self.curves[name].setSymbol(self.symbols[name] or ("o" if len(x) == 1 else None))
            self.curves[name].setData(x, y)
        if pending:
            self._keep_flat_curves_flat()

    def _keep_flat_curves_flat(self) -> None:
        values = [v for curve in self.curves.values() for v in (curve.getData()[1] if curve.getData()[1]
                  is not None else []) if math.isfinite(v)]
        box = self.getPlotItem().getViewBox()
        if not values:
            return
        low, high = min(values), max(values)
        centre, least = (low + high) / 2, FLAT * max(abs(low), abs(high), 1e-12)
        if high - low < least:  # flat: a fixed range around it, so it looks flat
            box.setYRange(centre - least / 2, centre + least / 2, padding=0.1)
        else:
            box.enableAutoRange(axis="y")


def write_csv(path, plots) -> None:
    """The curves of ``plots`` as one CSV table with a header: plot, curve, x, y (one row per point)."""
    import csv

    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(("plot", "curve", "x", "y"))
        for plot in plots:
            writer.writerows(plot.rows())


def write_png(path, plot) -> None:
    """The plot as drawn on screen, as a PNG image."""
    plot.redraw()  # pending data first
    if not plot.grab().save(str(path), "PNG"):
        raise OSError(f"cannot write a PNG image to {path}")


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

        self.set_in_legend("predicted (N-net)", False)  # until N-net predicts one

    def show_curve(self, curve) -> None:
        self.set_data("measured (noisy - denoised)", curve.signal, curve.std)
        self.set_data("predicted (N-net)", curve.signal if curve.predicted_std else [], curve.predicted_std or [])
        self.set_in_legend("predicted (N-net)", bool(curve.predicted_std))

    def clear_data(self) -> None:
        super().clear_data()
        self.set_in_legend("predicted (N-net)", False)
