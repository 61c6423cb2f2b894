"""The napari reader and writer on real TIFF files (ImageJ and OME metadata, as tifffile writes them):
axis labels, scale, units and the axes string; the OME-TIFF round trip; the lazy path; bad files."""

from __future__ import annotations

import dask.array as da
import napari
import numpy as np
import pytest
import tifffile

from napari_selfdenoise import _reader
from napari_selfdenoise.core.errors import SelfDenoiseError
from napari_selfdenoise.core.io import images as io

PLUGIN = "napari-selfdenoise"
SIZES = {"T": 3, "C": 2, "Z": 4, "Y": 24, "X": 32}


def make(axes: str, dtype=np.uint16) -> np.ndarray:
    shape = tuple(SIZES[a] for a in axes)
    values = np.arange(np.prod(shape)) % 251
    return values.reshape(shape).astype(dtype)


def write_imagej(path, data, axes, xy=0.25, z=0.5, unit="um"):
    metadata = {"axes": axes, "unit": unit}
    if "Z" in axes:
        metadata["spacing"] = z
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / xy, 1 / xy), metadata=metadata)
    return path


def write_ome(path, data, axes, xy=100.0, xy_unit="nm", z=0.3, **kwargs):
    metadata = {"axes": axes, "PhysicalSizeX": xy, "PhysicalSizeY": xy,
                "PhysicalSizeXUnit": xy_unit, "PhysicalSizeYUnit": xy_unit}
    if "Z" in axes:
        metadata["PhysicalSizeZ"] = z  # no unit: OME's default, µm
    tifffile.imwrite(path, data, ome=True, photometric="minisblack", metadata=metadata, **kwargs)
    return path


def units_of(layer) -> tuple[str, ...]:
    return tuple(str(u) for u in layer.units)


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


# ------------------------------------------------------------------------------ claiming files


def test_get_reader_claims_tiffs_only(tmp_path):
    for name in ("a.tif", "a.TIFF", "a.ome.tif", "a.ome.tiff"):
        assert _reader.get_reader(str(tmp_path / name)) is _reader.read_layers
    assert _reader.get_reader([str(tmp_path / "a.tif")]) is _reader.read_layers
    assert _reader.get_reader([str(tmp_path / "a.tif"), str(tmp_path / "b.tif")]) is None
    for name in ("a.png", "a.txt", "a.npy", "tif"):
        assert _reader.get_reader(str(tmp_path / name)) is None
    (tmp_path / "folder.tif").mkdir()
    assert _reader.get_reader(str(tmp_path / "folder.tif")) is None


# ------------------------------------------------------------------------------ reading through napari


def test_imagej_metadata(viewer, tmp_path):
    data = make("TZYX")
    path = write_imagej(tmp_path / "stack.tif", data, "TZYX", xy=0.25, z=0.5, unit="micron")
    (layer,) = viewer.open(str(path), plugin=PLUGIN)
    assert layer.name == "stack"
    np.testing.assert_array_equal(layer.data, data)
    assert layer.axis_labels == ("T", "Z", "Y", "X")
    np.testing.assert_allclose(layer.scale, [1.0, 0.5, 0.25, 0.25])
    assert units_of(layer) == ("pixel", "micrometer", "micrometer", "micrometer")
    assert layer.metadata["axes"] == "TZYX"
    assert layer.metadata["path"] == str(path)
    assert layer.metadata["axes_guessed"] is False


def test_imagej_channels_and_time(viewer, tmp_path):
    data = make("TCYX", np.float32)
    path = write_imagej(tmp_path / "tc.tif", data, "TCYX", xy=0.5, unit="nm")
    (layer,) = viewer.open(str(path), plugin=PLUGIN)
    assert layer.axis_labels == ("T", "C", "Y", "X")
    assert layer.data.dtype == np.float32
    np.testing.assert_allclose(layer.scale, [1.0, 1.0, 0.5, 0.5])
    assert units_of(layer) == ("pixel", "pixel", "nanometer", "nanometer")


def test_ome_metadata(viewer, tmp_path):
    data = make("TCZYX")
    path = write_ome(tmp_path / "five.ome.tif", data, "TCZYX", xy=100.0, xy_unit="nm", z=0.3)
    (layer,) = viewer.open(str(path), plugin=PLUGIN)
    assert layer.name == "five"
    np.testing.assert_array_equal(layer.data, data)
    assert layer.axis_labels == ("T", "C", "Z", "Y", "X")
    np.testing.assert_allclose(layer.scale, [1.0, 1.0, 0.3, 100.0, 100.0])
    assert units_of(layer) == ("pixel", "pixel", "micrometer", "nanometer", "nanometer")
    assert layer.metadata["axes"] == "TCZYX"


def test_bare_3d_tiff_axes_are_guessed(viewer, tmp_path):
    data = make("ZYX")
    path = tmp_path / "bare.tif"
    tifffile.imwrite(path, np.concatenate([data, data[:3]]), metadata=None)  # 7 planes, no axes
    (layer,) = viewer.open(str(path), plugin=PLUGIN)
    assert layer.axis_labels == ("Z", "Y", "X")
    assert layer.metadata == {"axes": "ZYX", "path": str(path), "axes_guessed": True}
    assert tuple(layer.scale) == (1.0, 1.0, 1.0)


def test_guessing_axes_opens_the_file_once(tmp_path, monkeypatch):
    path = tmp_path / "bare.tif"
    tifffile.imwrite(path, make("ZYX")[:, None].repeat(2, axis=1).reshape(8, 24, 32), metadata=None)
    opened = []

    class CountingTiffFile(tifffile.TiffFile):
        def __init__(self, *args, **kwargs):
            opened.append(args[0])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(tifffile, "TiffFile", CountingTiffFile)
    ((data, meta, _),) = _reader.read_layers(str(path))
    assert meta["metadata"]["axes"] == "ZYX" and meta["metadata"]["axes_guessed"]
    assert data.shape == (8, 24, 32)
    assert len(opened) == 1


def test_rgb_tiff_keeps_colour_as_an_axis(viewer, tmp_path):
    data = make("YX", np.uint8)[..., None].repeat(3, axis=-1)
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, data, photometric="rgb")
    (layer,) = viewer.open(str(path), plugin=PLUGIN)
    assert not layer.rgb
    assert layer.axis_labels == ("Y", "X", "C")
    assert layer.data.shape == (24, 32, 3)


def test_unknown_unit_still_opens(viewer, tmp_path):
    path = write_imagej(tmp_path / "odd.tif", make("YX", np.uint8), "YX", xy=2.0, unit="widgets")
    (layer,) = viewer.open(str(path), plugin=PLUGIN)
    np.testing.assert_allclose(layer.scale, [2.0, 2.0])  # the pixel size survives
    assert units_of(layer) == ("pixel", "pixel")  # a unit napari cannot parse does not


def test_default_reader_preference(viewer, tmp_path, monkeypatch):
    """What the README says: map *.tif to this plugin, then plain open / drag-and-drop uses it."""
    import napari.settings
    from napari.errors import MultipleReaderError

    # settings that are never saved (config_path=None): the user's settings stay untouched
    fresh = napari.settings.NapariSettings(config_path=None)
    monkeypatch.setattr(napari.settings, "_SETTINGS", fresh)
    path = write_ome(tmp_path / "dropped.tif", make("ZYX"), "ZYX")
    with pytest.raises(MultipleReaderError):  # napari's own reader claims *.tif too: napari asks
        viewer.open(str(path), plugin=None)  # plugin=None: what drag-and-drop and File > Open do
    napari.settings.get_settings().plugins.extension2reader = {"*.tif": PLUGIN}
    (layer,) = viewer.open(str(path), plugin=None)
    assert layer.metadata["axes"] == "ZYX"
    assert units_of(layer) == ("micrometer", "nanometer", "nanometer")


# ------------------------------------------------------------------------------ writer round trip

ROUND_TRIPS = [
    ("YX", np.uint8, "imagej"),
    ("ZYX", np.uint16, "ome"),
    ("TYX", np.float32, "imagej"),
    ("CYX", np.int16, "ome"),
    ("TZYX", np.float32, "ome"),
    ("TZYX", np.uint16, "imagej"),
]


@pytest.mark.parametrize(("axes", "dtype", "kind"), ROUND_TRIPS)
def test_round_trip_reader_writer_reader(viewer, tmp_path, axes, dtype, kind):
    data = make(axes, dtype)
    writer = write_imagej if kind == "imagej" else write_ome
    source = writer(tmp_path / f"in.{kind}.tif", data, axes)
    (first,) = viewer.open(str(source), plugin=PLUGIN)

    out = tmp_path / "out.ome.tif"
    written = napari.save_layers(str(out), [first], plugin=PLUGIN)
    assert written == [str(out)]
    xml = tifffile.TiffFile(out).ome_metadata
    assert "micrometer" not in xml and "nanometer" not in xml  # OME unit symbols, not pint names

    (second,) = viewer.open(str(out), plugin=PLUGIN)
    assert second.data.dtype == dtype
    np.testing.assert_array_equal(second.data, data)
    assert second.axis_labels == first.axis_labels == tuple(axes)
    assert second.metadata["axes"] == axes
    np.testing.assert_allclose(second.scale, first.scale)
    assert units_of(second) == units_of(first)
    assert any(u != "pixel" for u in units_of(second))  # there was a calibration to keep


def test_writer_plain_napari_layer(viewer, tmp_path):
    """A layer napari made itself: no axes metadata, default labels, scale and units."""
    data = make("ZYX", np.float32)
    layer = viewer.add_image(data)
    out = tmp_path / "plain.ome.tif"
    napari.save_layers(str(out), [layer], plugin=PLUGIN)
    image = io.read_image(out)
    assert image.axes == "ZYX"
    assert image.scale == {} and image.units == {}  # scale 1 'pixel' is not a calibration
    np.testing.assert_array_equal(image.data, data)


def test_writer_uses_axis_labels_and_scale(viewer, tmp_path):
    data = make("TYX", np.uint16)
    layer = viewer.add_image(data, axis_labels=("t", "y", "x"), scale=(2.0, 0.5, 0.5),
                             units=("second", "micrometer", "micrometer"))
    out = tmp_path / "labelled.tif"
    napari.save_layers(str(out), [layer], plugin=PLUGIN)
    image = io.read_image(out)
    assert image.axes == "TYX"
    assert image.scale == {"Y": 0.5, "X": 0.5}  # OME keeps pixel sizes for X, Y, Z only
    assert image.units == {"Y": "µm", "X": "µm"}


# ------------------------------------------------------------------------------ big files: lazy


def test_small_file_is_read_into_memory(tmp_path):
    path = write_ome(tmp_path / "small.ome.tif", make("ZYX"), "ZYX")
    ((data, _, _),) = _reader.read_layers(str(path))
    assert type(data) is np.ndarray


def test_big_file_is_memory_mapped(viewer, tmp_path, monkeypatch):
    monkeypatch.setattr(io, "LAZY_THRESHOLD", 1024)  # bytes: every test file is "big"
    data = make("TZYX")
    path = write_ome(tmp_path / "big.ome.tif", data, "TZYX")
    (layer,) = viewer.open(str(path), plugin=PLUGIN)
    assert isinstance(layer.data, np.memmap)
    assert not layer.data.flags.writeable
    np.testing.assert_array_equal(layer.data, data)
    assert layer.axis_labels == ("T", "Z", "Y", "X")
    np.testing.assert_allclose(layer.scale, [1.0, 0.3, 100.0, 100.0])


def test_big_compressed_file_is_dask_read_plane_by_plane(viewer, tmp_path, monkeypatch):
    monkeypatch.setattr(io, "LAZY_THRESHOLD", 1024)
    reads = []
    read_page = io._read_page
    monkeypatch.setattr(io, "_read_page",
                        lambda path, index: reads.append(index) or read_page(path, index))
    data = make("TZCYX")
    path = tmp_path / "zipped.tif"
    tifffile.imwrite(path, data, imagej=True, compression="zlib", metadata={"axes": "TZCYX"})

    ((lazy, meta, kind),) = _reader.read_layers(str(path))
    assert isinstance(lazy, da.Array) and kind == "image"
    assert reads == []  # nothing read yet
    assert lazy.shape == data.shape and lazy.dtype == data.dtype
    assert lazy.chunksize == (1, 1, 1, 24, 32)  # one TIFF page per chunk
    np.testing.assert_array_equal(lazy[2, 3, 1].compute(), data[2, 3, 1])
    assert len(reads) == 1  # one plane asked for, one page read
    assert meta["metadata"]["axes"] == "TZCYX"

    (layer,) = viewer.open(str(path), plugin=PLUGIN)
    assert isinstance(layer.data, da.Array)
    np.testing.assert_array_equal(np.asarray(layer.data), data)


# ------------------------------------------------------------------------------ bad input


def test_non_tiff_is_not_claimed(viewer, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not an image")
    assert _reader.get_reader(str(path)) is None
    with pytest.raises(ValueError, match="not a compatible reader"):
        viewer.open(str(path), plugin=PLUGIN)
    assert len(viewer.layers) == 0


@pytest.mark.parametrize("content", [b"", b"not a tiff at all", b"\x89PNG\r\n\x1a\n" + bytes(64),
                                     b"II*\x00\xff\xff\xff\x7f"])
def test_corrupt_tiff_gives_a_clear_error(viewer, tmp_path, content):
    path = tmp_path / "broken.tif"
    path.write_bytes(content)
    with pytest.raises(SelfDenoiseError, match=r"cannot read .*broken\.tif as TIFF"):
        viewer.open(str(path), plugin=PLUGIN)
    assert len(viewer.layers) == 0


def test_truncated_tiff_gives_a_clear_error(viewer, tmp_path):
    path = write_ome(tmp_path / "cut.ome.tif", make("ZYX"), "ZYX")
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(SelfDenoiseError, match="as TIFF"):
        viewer.open(str(path), plugin=PLUGIN)
    assert len(viewer.layers) == 0
