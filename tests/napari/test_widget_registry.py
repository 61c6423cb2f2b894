"""The Train widget's method picker and method options come from the registry (issue 17): a toy method
registered in the test (tests/toy_method.py) is offered, with its summary and its option's control."""

from __future__ import annotations

import pytest
from qtpy.QtCore import Qt
from toy_method import ToyMethod, register_toy

from napari_selfdenoise.core.data.synthetic import add_noise, fluorescence_image

PLUGIN = "napari-selfdenoise"


@pytest.fixture
def viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(add_noise(fluorescence_image((64, 64), seed=1), sigma=0.1, seed=2), name="cells")
    return viewer


def train_widget(viewer):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Train & Denoise")
    return widget


def test_a_registered_method_is_in_the_picker_with_its_option(viewer, monkeypatch):
    register_toy(monkeypatch)
    widget = train_widget(viewer)
    picker = widget.method_picker
    index = picker.findData("toy")
    assert index >= 0 and picker.itemText(index) == "toy: Toy masking"
    assert picker.itemData(index, Qt.ItemDataRole.ToolTipRole) == ToyMethod.summary
    picker.setCurrentIndex(index)
    assert widget.method_help.text() == ToyMethod.summary
    label, control = widget.method_rows["toy grid"]
    assert label.text() == "toy grid" and not label.isHidden()
    assert not control.isHidden() and (control.minimum(), control.maximum(), control.value()) == (2, 6, 3)
    assert control.toolTip() == "Spacing of the toy's grid of hidden pixels"  # the Option's help
    assert widget.method_rows["noise mixture K"][1].isHidden()  # another method's option
    control.setValue(5)
    assert widget.config("YX").method_options == {"toy_grid": 5, "blind_radius": 0}
    picker.setCurrentIndex(picker.findData("nnet"))  # the toy's option is the toy's alone
    assert control.isHidden() and "toy_grid" not in widget.config("YX").method_options


def test_the_picker_lists_auto_the_registered_methods_and_classic(viewer):
    from napari_selfdenoise.core.methods import METHODS

    picker = train_widget(viewer).method_picker
    names = [picker.itemData(i) for i in range(picker.count())]
    assert names == ["auto", *METHODS, "classic"] and "toy" not in names
