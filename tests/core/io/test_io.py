"""Reading and writing images: round trips, metadata, errors and atomic writes."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import tifffile

from napari_selfdenoise.core.errors import SelfDenoiseError
from napari_selfdenoise.core.io import images as io
from napari_selfdenoise.core.io.images import ImageData, read_image, write_image
from napari_selfdenoise.core.io.outputs import output_path_for

SIZES = {"S": 2, "T": 3, "C": 4, "Z": 5, "Y": 6, "X": 7}
AXES = ["YX", "ZYX", "TYX", "CYX", "TZCYX", "SYX", "STYX", "SZCYX"]
DTYPES = [np.uint8, np.uint16, np.int16, np.float32, np.float64]


def make(axes: str, dtype=np.float32) -> np.ndarray:
    shape = tuple(SIZES[a] for a in axes)
    values = np.arange(np.prod(shape)) % 251  # distinct-ish values that fit every dtype
    return values.reshape(shape).astype(dtype)


def no_leftovers(folder) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".part")]


# ------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("suffix", [".ome.tif", ".tiff", ".npy"])
@pytest.mark.parametrize("axes", AXES)
def test_round_trip_axes(tmp_path, axes, suffix):
    data = make(axes)
    out = write_image(tmp_path / f"img{suffix}", data, axes)
    image = read_image(out, axes=None if suffix != ".npy" or len(axes) == 2 else axes)
    assert image.axes == axes
    assert image.data.shape == data.shape
    assert image.data.dtype == data.dtype
    np.testing.assert_array_equal(image.data, data)
    assert image.path == str(out)


@pytest.mark.parametrize("suffix", [".ome.tif", ".npy"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_dtypes(tmp_path, dtype, suffix):
    data = make("ZYX", dtype)
    image = read_image(write_image(tmp_path / f"img{suffix}", data, "ZYX"))
    assert image.data.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(image.data, data)


def test_s_without_free_ome_axis_keeps_labels(tmp_path):
    # S first with T, Z and C all present: OME cannot place it there, so it moves after T
    data = make("STZCYX")
    image = read_image(write_image(tmp_path / "six.ome.tif", data, "STZCYX"))
    assert image.axes == "TSZCYX"
    np.testing.assert_array_equal(image.data, data.transpose(1, 0, 2, 3, 4, 5))


def test_yx_not_last_is_reordered(tmp_path):
    data = make("YXC")
    image = read_image(write_image(tmp_path / "rgbish.ome.tif", data, "YXC"))
    assert image.axes == "CYX"
    np.testing.assert_array_equal(image.data, data.transpose(2, 0, 1))


def test_foreign_q_axis_is_unknown(tmp_path):
    # a 'Q' modulo axis not written by us is not taken for samples
    path = tmp_path / "q.ome.tif"
    tifffile.imwrite(path, make("ZYX"), ome=True, metadata={"axes": "QYX"})
    with pytest.raises(SelfDenoiseError, match="cannot tell the axes"):
        read_image(path)
    assert read_image(path, axes="SYX").axes == "SYX"


# ------------------------------------------------------------------------------ metadata


def test_ome_scale_round_trip(tmp_path):
    scale = {"X": 0.25, "Y": 0.5, "Z": 2.0}
    units = {"X": "µm", "Y": "µm", "Z": "nm"}
    out = write_image(tmp_path / "s.ome.tif", make("ZYX"), "ZYX", scale=scale, units=units)
    image = read_image(out)
    assert image.scale == pytest.approx(scale)
    assert image.units == units


def test_ome_scale_only_for_present_axes(tmp_path):
    out = write_image(tmp_path / "s.ome.tif", make("YX"), "YX", scale={"X": 0.1, "Y": 0.1})
    image = read_image(out)
    assert image.scale == pytest.approx({"X": 0.1, "Y": 0.1})
    assert image.units == {"X": "µm", "Y": "µm"}  # OME's default unit
    assert read_image(write_image(tmp_path / "n.ome.tif", make("YX"), "YX")).scale == {}


def test_imagej_hyperstack(tmp_path):
    path = tmp_path / "ij.tif"
    data = make("TZCYX", np.uint16)
    tifffile.imwrite(
        path,
        data,
        imagej=True,
        resolution=(1 / 0.2, 1 / 0.2),
        metadata={"axes": "TZCYX", "spacing": 1.5, "unit": "um"},
    )
    image = read_image(path)
    assert image.axes == "TZCYX"
    np.testing.assert_array_equal(image.data, data)
    assert image.scale == pytest.approx({"X": 0.2, "Y": 0.2, "Z": 1.5})
    assert image.units == {"X": "µm", "Y": "µm", "Z": "µm"}


def test_rgb_samples_become_channels(tmp_path):
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, make("YXC", np.uint8)[..., :3], photometric="rgb")
    assert read_image(path).axes == "YXC"


def test_plain_2d_tiff_is_yx(tmp_path):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, make("YX", np.uint16), metadata=None)
    image = read_image(path)
    assert image.axes == "YX"
    assert image.scale == {}


def test_3d_tiff_without_metadata_needs_axes(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, make("ZYX"), metadata=None)
    with pytest.raises(SelfDenoiseError) as err:
        read_image(path)
    message = str(err.value)
    assert "stack.tif" in message and "(5, 6, 7)" in message and "--axes ZYX" in message
    assert read_image(path, axes="tyx").axes == "TYX"


def test_axes_override_metadata(tmp_path):
    out = write_image(tmp_path / "z.ome.tif", make("ZYX"), "ZYX")
    assert read_image(out, axes="TYX").axes == "TYX"
    with pytest.raises(SelfDenoiseError, match="name 4 dimensions"):
        read_image(out, axes="TZYX")


def test_npy_default_axes(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, make("ZYX"))
    assert read_image(path).axes == "ZYX"
    assert read_image(path, axes="SYX").axes == "SYX"


# ------------------------------------------------------------------------------ errors


def test_missing_file(tmp_path):
    with pytest.raises(SelfDenoiseError, match="file not found: .*nope.tif"):
        read_image(tmp_path / "nope.tif")


def test_directory(tmp_path):
    with pytest.raises(SelfDenoiseError, match="is a folder"):
        read_image(tmp_path)


def test_bad_extension(tmp_path):
    path = tmp_path / "img.png"
    path.write_bytes(b"\x89PNG")
    with pytest.raises(SelfDenoiseError, match=r"unsupported file type.*\.tif.*\.npy"):
        read_image(path)
    with pytest.raises(SelfDenoiseError, match="unsupported file type"):
        write_image(tmp_path / "out.png", make("YX"), "YX")


@pytest.mark.parametrize("content", [b"", b"not a tiff at all", b"II*\x00\xff\xff\xff\x7f"])
def test_corrupt_tiff(tmp_path, content):
    path = tmp_path / "bad.tif"
    path.write_bytes(content)
    with pytest.raises(SelfDenoiseError, match="cannot read .*bad.tif as TIFF"):
        read_image(path)


def test_truncated_tiff(tmp_path):
    path = write_image(tmp_path / "t.ome.tif", make("ZYX"), "ZYX")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(SelfDenoiseError, match="as TIFF"):
        read_image(path)


def test_object_npy(tmp_path):
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(SelfDenoiseError, match="Python objects"):
        read_image(path)


def test_pickle_file_named_npy(tmp_path):
    path = tmp_path / "p.npy"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(SelfDenoiseError, match="p.npy"):
        read_image(path)


def test_non_numeric_npy(tmp_path):
    path = tmp_path / "s.npy"
    np.save(path, np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(SelfDenoiseError, match="numeric"):
        read_image(path)


def test_write_into_missing_folder(tmp_path):
    with pytest.raises(SelfDenoiseError, match="does not exist"):
        write_image(tmp_path / "no" / "out.ome.tif", make("YX"), "YX")
    assert not (tmp_path / "no").exists()


def test_write_checks_axes(tmp_path):
    with pytest.raises(SelfDenoiseError):
        write_image(tmp_path / "out.ome.tif", make("ZYX"), "YX")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ atomic writes


def test_failed_tiff_write_leaves_nothing(tmp_path, monkeypatch):
    def broken_imwrite(path, *args, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"II*\x00partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", broken_imwrite)
    with pytest.raises(RuntimeError, match="disk full"):
        write_image(tmp_path / "out.ome.tif", make("ZYX"), "ZYX")
    assert list(tmp_path.iterdir()) == []


def test_cancelled_npy_write_leaves_nothing(tmp_path, monkeypatch):
    def interrupted_save(fh, *args, **kwargs):
        fh.write(b"\x93NUMPY partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        write_image(tmp_path / "out.npy", make("YX"), "YX")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    target = write_image(tmp_path / "out.ome.tif", make("YX"), "YX")
    before = target.read_bytes()
    monkeypatch.setattr(tifffile, "imwrite", lambda *a, **k: (_ for _ in ()).throw(OSError("x")))
    with pytest.raises(OSError):
        write_image(target, make("YX") + 1, "YX")
    assert target.read_bytes() == before
    assert no_leftovers(tmp_path)


def test_write_overwrites_and_uses_no_part_name(tmp_path):
    target = write_image(tmp_path / "out.npy", make("YX"), "YX")
    write_image(target, make("YX") + 1, "YX")
    assert [p.name for p in tmp_path.iterdir()] == ["out.npy"]
    np.testing.assert_array_equal(np.load(target), make("YX") + 1)


# ------------------------------------------------------------------------------ lazy reading


def test_lazy_tiff_is_memmap(tmp_path):
    data = make("TZCYX", np.uint16)
    out = write_image(tmp_path / "big.ome.tif", data, "TZCYX")
    image = read_image(out, lazy=True)
    assert isinstance(image.data, np.memmap)
    assert not image.data.flags.writeable
    np.testing.assert_array_equal(image.data, data)
    assert not isinstance(read_image(out, lazy=False).data, np.memmap)


def test_lazy_imagej_squeezed_shape(tmp_path):
    path = tmp_path / "ij.tif"
    data = make("TZCYX")[:, :1]  # Z of length 1: tifffile squeezes it from the series
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TZCYX"})
    image = read_image(path, lazy=True)
    assert image.axes == "TCYX"
    assert isinstance(image.data, np.memmap)
    np.testing.assert_array_equal(image.data, data[:, 0])


def test_lazy_compressed_tiff_falls_back(tmp_path):
    path = tmp_path / "z.tif"
    data = make("ZYX", np.uint16)
    tifffile.imwrite(path, data, compression="zlib", metadata={"axes": "ZYX"})
    image = read_image(path, lazy=True)
    assert not isinstance(image.data, np.memmap)
    np.testing.assert_array_equal(image.data, data)


def test_lazy_npy_is_memmap(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, make("ZYX"))
    assert isinstance(read_image(path, lazy=True).data, np.memmap)
    assert not isinstance(read_image(path).data, np.memmap)  # small file: lazy=None reads


def test_lazy_default_threshold(tmp_path, monkeypatch):
    monkeypatch.setattr(io, "LAZY_THRESHOLD", 10)
    out = write_image(tmp_path / "a.ome.tif", make("ZYX"), "ZYX")
    assert isinstance(read_image(out).data, np.memmap)


# ------------------------------------------------------------------------------ output paths


def test_output_path_single_file(tmp_path):
    assert output_path_for("in.tif", tmp_path / "res.tif", 1) == tmp_path / "res.tif"


def test_output_path_existing_folder(tmp_path):
    target = output_path_for("/data/cells.ome.tif", tmp_path, 1)
    assert target == tmp_path / "cells_denoised.ome.tif"


def test_output_path_several_inputs_creates_folder(tmp_path):
    out = tmp_path / "results"
    assert output_path_for("a/b.npy", out, 2) == out / "b_denoised.ome.tif"
    assert out.is_dir()


def test_output_path_several_inputs_into_file(tmp_path):
    (tmp_path / "f.tif").write_bytes(b"")
    with pytest.raises(SelfDenoiseError, match="must be a folder"):
        output_path_for("a.tif", tmp_path / "f.tif", 2)


def test_output_path_never_overwrites_input(tmp_path):
    src = tmp_path / "x.ome.tif"
    with pytest.raises(SelfDenoiseError, match="overwrite the input"):
        output_path_for(src, tmp_path / "." / "x.ome.tif", 1)


def test_image_data_defaults():
    image = ImageData(np.zeros((2, 2)), "YX")
    assert image.scale == {} and image.units == {} and image.path is None
