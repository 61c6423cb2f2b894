"""Other formats (CZI, ND2, OME-Zarr, ...) through the optional [io] extra.

bioio is not a test dependency, so these tests inject small stand-ins for ``bioio`` and
``aicsimageio`` into ``sys.modules`` that behave like their documented API: ``BioImage(path)`` /
``AICSImage(path)`` with ``.dims.order``/``.dims.shape`` in T, C, Z, Y, X order (plus S for RGB
samples, M for mosaic tiles), ``.dask_data``, ``.physical_pixel_sizes`` (Z, Y, X; None when
unknown) and, in bioio 3, ``.dimension_properties`` with pint units. The mapping to our axes,
scale and units is the code under test.
"""

from __future__ import annotations

import sys
import types
from typing import NamedTuple

import dask.array as da
import numpy as np
import pint
import pytest

from napari_selfdenoise import _reader
from napari_selfdenoise.core.errors import SelfDenoiseError
from napari_selfdenoise.core.io import images as io

PLUGIN = "napari-selfdenoise"
UREG = pint.get_application_registry()


class PhysicalPixelSizes(NamedTuple):  # as bioio_base.types.PhysicalPixelSizes
    Z: float | None
    Y: float | None
    X: float | None


class DimensionProperty(NamedTuple):
    type: str | None
    unit: object | None


def fake_library(monkeypatch, module: str, order: str, data: np.ndarray, sizes=(None, None, None),
                 units=None, error: Exception | None = None) -> list[str]:
    """Install a stand-in ``bioio`` (BioImage) or ``aicsimageio`` (AICSImage); returns the paths
    it was asked to open."""
    opened: list[str] = []

    class Image:
        def __init__(self, path):
            opened.append(path)
            if error is not None:
                raise error
            self.dims = types.SimpleNamespace(order=order, shape=data.shape)
            self.dask_data = da.from_array(data, chunks=(1,) * (data.ndim - 2) + data.shape[-2:])
            self.physical_pixel_sizes = PhysicalPixelSizes(*sizes)
            if units is not None:  # bioio >= 3 only
                self.dimension_properties = types.SimpleNamespace(**{
                    axis: DimensionProperty("space", None if u is None else UREG.Unit(u))
                    for axis, u in zip("ZYX", units)
                })

    fake = types.ModuleType(module)
    setattr(fake, "BioImage" if module == "bioio" else "AICSImage", Image)
    monkeypatch.setitem(sys.modules, module, fake)
    return opened


@pytest.fixture
def no_library(monkeypatch):
    """Neither bioio nor aicsimageio importable (None in sys.modules blocks an import)."""
    monkeypatch.setitem(sys.modules, "bioio", None)
    monkeypatch.setitem(sys.modules, "aicsimageio", None)


@pytest.fixture
def czi(tmp_path):
    path = tmp_path / "cells.czi"
    path.write_bytes(b"ZISRAWFILE" + bytes(64))  # the stand-in readers never look inside
    return path


def tczyx(shape, dtype=np.uint16) -> np.ndarray:
    return (np.arange(np.prod(shape)) % 1000).reshape(shape).astype(dtype)


# ------------------------------------------------------------------------------ claiming files


def test_other_formats_not_claimed_without_a_library(no_library, czi, tmp_path):
    assert io.other_formats_library() is None
    for name in ("a.czi", "a.nd2", "a.lif", "a.ome.zarr", "a.dv"):
        assert _reader.get_reader(str(tmp_path / name)) is None
    assert _reader.get_reader(str(tmp_path / "a.tif")) is _reader.read_layers  # TIFFs need nothing
    with pytest.raises(SelfDenoiseError, match=r"needs the \[io\] extra.*bioio"):
        io.read_image(czi)


def test_other_formats_claimed_with_bioio(monkeypatch, no_library, tmp_path):
    fake_library(monkeypatch, "bioio", "TCZYX", tczyx((1, 1, 1, 4, 4)))
    assert io.other_formats_library() == "bioio"
    for name in ("a.czi", "a.ND2", "a.lif", "a.ome.zarr", "a.r3d"):
        assert _reader.get_reader(str(tmp_path / name)) is _reader.read_layers
    assert _reader.get_reader(str(tmp_path / "a.png")) is None


def test_bioio_is_preferred_over_aicsimageio(monkeypatch, czi):
    fake_library(monkeypatch, "aicsimageio", "TCZYX", tczyx((1, 1, 1, 4, 4)),
                 error=AssertionError("aicsimageio must not be used when bioio is there"))
    opened = fake_library(monkeypatch, "bioio", "TCZYX", tczyx((1, 1, 1, 4, 4)))
    assert io.read_image(czi).axes == "YX"
    assert opened == [str(czi)]


# ------------------------------------------------------------------------------ dims, scale, units


def test_bioio_dims_scale_and_units_through_napari(make_napari_viewer, monkeypatch, no_library,
                                                   czi):
    data = tczyx((3, 2, 5, 16, 24))
    fake_library(monkeypatch, "bioio", "TCZYX", data, sizes=(0.8, 0.1, 0.1),
                 units=("micrometer", "nanometer", "nanometer"))
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(czi), plugin=PLUGIN)
    assert layer.name == "cells"
    assert layer.axis_labels == ("T", "C", "Z", "Y", "X")
    np.testing.assert_array_equal(np.asarray(layer.data), data)
    assert layer.data.dtype == np.uint16
    np.testing.assert_allclose(layer.scale, [1.0, 1.0, 0.8, 0.1, 0.1])
    assert tuple(str(u) for u in layer.units) == ("pixel", "pixel", "micrometer", "nanometer",
                                                  "nanometer")
    assert layer.metadata["axes"] == "TCZYX"


@pytest.mark.parametrize(("order", "shape", "axes"), [
    ("TCZYX", (1, 1, 1, 16, 24), "YX"),
    ("TCZYX", (1, 1, 7, 16, 24), "ZYX"),
    ("TCZYX", (5, 1, 1, 16, 24), "TYX"),
    ("TCZYX", (1, 3, 1, 16, 24), "CYX"),
    ("TCZYX", (4, 1, 6, 16, 24), "TZYX"),
    ("TCZYXS", (2, 1, 1, 16, 24, 3), "TYXC"),  # RGB samples become channels
    ("MTCZYX", (1, 1, 2, 3, 16, 24), "CZYX"),  # one mosaic tile is just dropped
])
def test_dims_to_axes(monkeypatch, no_library, czi, order, shape, axes):
    data = tczyx(shape)
    fake_library(monkeypatch, "bioio", order, data, sizes=(2.0, 0.5, 0.5))
    image = io.read_image(czi)
    assert image.axes == axes
    np.testing.assert_array_equal(image.data, data.reshape(image.data.shape))
    assert image.data.size == data.size
    assert image.scale == {a: s for a, s in {"Z": 2.0, "Y": 0.5, "X": 0.5}.items() if a in axes}
    assert image.units == {a: "µm" for a in image.scale}  # no unit information: micrometres


def test_unknown_pixel_sizes_give_no_scale(monkeypatch, no_library, czi):
    fake_library(monkeypatch, "bioio", "TCZYX", tczyx((1, 1, 4, 16, 24)), sizes=(None, 0.2, 0.2),
                 units=(None, "micrometer", "micrometer"))
    image = io.read_image(czi)
    assert image.axes == "ZYX"
    assert image.scale == {"Y": 0.2, "X": 0.2}
    assert image.units == {"Y": "µm", "X": "µm"}


def test_aicsimageio_is_used_when_bioio_is_missing(monkeypatch, no_library, tmp_path):
    path = tmp_path / "scan.nd2"
    path.write_bytes(b"nd2")
    data = tczyx((2, 1, 3, 16, 24), np.float32)
    opened = fake_library(monkeypatch, "aicsimageio", "TCZYX", data, sizes=(1.5, 0.3, 0.3))
    assert io.other_formats_library() == "aicsimageio"
    layers = _reader.get_reader(str(path))(str(path))
    ((array, meta, kind),) = layers
    assert opened == [str(path)] and kind == "image"
    assert meta["axis_labels"] == ("T", "Z", "Y", "X")
    assert meta["scale"] == (1.0, 1.5, 0.3, 0.3)
    assert meta["units"] == ("pixel", "µm", "µm", "µm")
    np.testing.assert_array_equal(array, data[:, 0])


def test_ome_zarr_folder(make_napari_viewer, monkeypatch, no_library, tmp_path):
    folder = tmp_path / "plate.ome.zarr"
    folder.mkdir()
    data = tczyx((1, 2, 3, 16, 24))
    fake_library(monkeypatch, "bioio", "TCZYX", data, sizes=(1.0, 0.25, 0.25),
                 units=("micrometer",) * 3)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(folder), plugin=PLUGIN)
    assert layer.name == "plate"
    assert layer.axis_labels == ("C", "Z", "Y", "X")
    np.testing.assert_allclose(layer.scale, [1.0, 1.0, 0.25, 0.25])


def test_lazy_only_for_big_images(monkeypatch, no_library, czi):
    data = tczyx((2, 1, 3, 16, 24))
    fake_library(monkeypatch, "bioio", "TCZYX", data)
    assert type(io.read_image(czi, dask=True).data) is np.ndarray  # small: read now
    ((small, _, _),) = _reader.read_layers(str(czi))
    assert type(small) is np.ndarray
    monkeypatch.setattr(io, "LAZY_THRESHOLD", 1024)  # bytes
    ((big, _, _),) = _reader.read_layers(str(czi))
    assert isinstance(big, da.Array)
    np.testing.assert_array_equal(big.compute(), data[:, 0])
    # the engine (CLI, Python API) asks for numpy: lazy without dask reads everything
    assert type(io.read_image(czi, lazy=True).data) is np.ndarray


def test_failure_while_reading_pixels_is_a_clear_error(monkeypatch, no_library, czi):
    def broken(block):
        raise OSError("truncated chunk")

    fake_library(monkeypatch, "bioio", "TCZYX", tczyx((1, 1, 3, 16, 24)))
    image_class = sys.modules["bioio"].BioImage
    init = image_class.__init__

    def init_with_broken_pixels(self, path):
        init(self, path)
        self.dask_data = self.dask_data.map_blocks(broken, dtype=np.uint16)

    monkeypatch.setattr(image_class, "__init__", init_with_broken_pixels)
    with pytest.raises(SelfDenoiseError, match="cells.czi with bioio: truncated chunk"):
        io.read_image(czi)


def test_axes_override(monkeypatch, no_library, czi):
    fake_library(monkeypatch, "bioio", "TCZYX", tczyx((1, 1, 6, 16, 24)))
    assert io.read_image(czi, axes="TYX").axes == "TYX"
    with pytest.raises(SelfDenoiseError, match="name 4 dimensions"):
        io.read_image(czi, axes="TZYX")


# ------------------------------------------------------------------------------ errors


def test_mosaic_tiles_are_refused(monkeypatch, no_library, czi):
    fake_library(monkeypatch, "bioio", "MTCZYX", tczyx((4, 1, 1, 1, 16, 24)))
    with pytest.raises(SelfDenoiseError, match=r"dimension 'M' of size 4"):
        io.read_image(czi)


def test_channels_and_rgb_together_are_refused(monkeypatch, no_library, czi):
    fake_library(monkeypatch, "bioio", "TCZYXS", tczyx((1, 2, 1, 16, 24, 3)))
    with pytest.raises(SelfDenoiseError, match="both channels and RGB samples"):
        io.read_image(czi)


def test_missing_bioio_plugin_says_what_to_install(monkeypatch, no_library, czi):
    class UnsupportedFileFormatError(Exception):  # as bioio_base.exceptions
        pass

    fake_library(monkeypatch, "bioio", "TCZYX", tczyx((1, 1, 1, 4, 4)),
                 error=UnsupportedFileFormatError("BioImage does not support the image"))
    with pytest.raises(SelfDenoiseError, match=r"cells\.czi with bioio.*pip install bioio-czi"):
        io.read_image(czi)


def test_reader_failure_is_a_clear_error_in_napari(make_napari_viewer, monkeypatch, no_library,
                                                   czi):
    fake_library(monkeypatch, "bioio", "TCZYX", tczyx((1, 1, 1, 4, 4)),
                 error=OSError("corrupt segment header"))
    viewer = make_napari_viewer()
    with pytest.raises(SelfDenoiseError, match="cannot read .*cells.czi with bioio: corrupt"):
        viewer.open(str(czi), plugin=PLUGIN)
    assert len(viewer.layers) == 0
