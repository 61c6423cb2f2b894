"""napari reader: TIFF/OME-TIFF with axis labels, scale, units and the axes string (thin adapter over core.io)."""

from __future__ import annotations

from pathlib import Path

from .core.errors import SelfDenoiseError

_SUFFIXES = (".tif", ".tiff")


def get_reader(path):
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    if not str(path).lower().endswith(_SUFFIXES):
        return None
    return read_layers


def read_layers(path):
    import tifffile

    from .core.axes import default_axes
    from .core.io import read_image

    path = path[0] if isinstance(path, list) else path
    try:
        image = read_image(path)
    except SelfDenoiseError:
        # Unknown axes (e.g. a bare 3-D TIFF): guess from the dimension count, as napari itself would;
        # the widget lets the user correct the guess.
        with tifffile.TiffFile(path) as tif:
            ndim = len(tif.series[0].shape)
        image = read_image(path, axes=default_axes(ndim))
    kwargs = {
        "name": Path(path).name.split(".")[0],
        "axis_labels": tuple(image.axes),
        "scale": tuple(image.scale.get(a, 1.0) for a in image.axes),
        "units": tuple(image.units.get(a, "pixel") for a in image.axes),
        "metadata": {"axes": image.axes, "path": str(path)},
    }
    return [(image.data, kwargs, "image")]
