"""The napari dock widgets (the only Qt code in the package; the engine in ``core`` never imports Qt)."""

from .apply_widget import ApplyWidget
from .train_widget import TrainWidget

__all__ = ["ApplyWidget", "TrainWidget"]
