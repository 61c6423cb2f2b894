"""Big data: lazy inputs (memory-maps, zarr, dask, any array-like), training that reads only patches, and
prediction streamed block by block into OME-Zarr / OME-TIFF that equals in-memory prediction exactly.
Bad input: odd chunks, existing outputs, a disk that fills up mid-write."""

from __future__ import annotations

import errno
import json

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

from napari_selfdenoise.cli import main as cli_main
from napari_selfdenoise.core.data import normalize
from napari_selfdenoise.core.data.axes import make_layout
from napari_selfdenoise.core.data.synthetic import add_noise, fluorescence_image
from napari_selfdenoise.core.denoiser import Denoiser
from napari_selfdenoise.core.errors import SelfDenoiseError
from napari_selfdenoise.core.io import atomic
from napari_selfdenoise.core.io.images import read_image, write_image
from napari_selfdenoise.core.predict import streaming

QUICK = dict(patch=32, batch=4, features=8, depth=2, steps_per_epoch=5, steps=2, seed=0)
TILE = 48  # several tiles per frame, and blocks (below) that cut through tiles
BLOCK = (40, 56)


def _stack(frames=3, shape=(100, 120), seed=1) -> np.ndarray:
    images = [fluorescence_image(shape, seed=seed + t) for t in range(frames)]
    return (add_noise(np.stack(images), "poisson_gaussian", photons=40, seed=seed) * 1000).astype(np.uint16)


@pytest.fixture(scope="module")
def stack():
    return _stack()


@pytest.fixture(scope="module")
def nnet(stack):
    return Denoiser("nnet", "TYX", **QUICK).fit(stack)


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


# ----------------------------------------------------------------------------------- equality


def test_streamed_zarr_and_tiff_equal_in_memory_bit_for_bit(nnet, stack, tmp_path):
    expected = nnet.predict_outputs(stack, tile=TILE)
    written = nnet.predict_to(stack, tmp_path / "d.ome.zarr", noise_std=tmp_path / "s.ome.tif", tile=TILE,
                              block=BLOCK)
    assert written == [tmp_path / "d.ome.zarr", tmp_path / "s.ome.tif"]
    zarr_back = read_image(tmp_path / "d.ome.zarr")
    assert zarr_back.axes == "TYX"
    np.testing.assert_array_equal(zarr_back.data, expected["denoised"])
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "s.ome.tif"), expected["noise_std"])
    assert _listing(tmp_path) == ["d.ome.zarr", "s.ome.tif"]  # no temporary leftovers
    # the default blocks (one per frame here) give the same again
    nnet.predict_to(stack, tmp_path / "d2.ome.tif", tile=TILE)
    np.testing.assert_array_equal(read_image(tmp_path / "d2.ome.tif").data, expected["denoised"])


def test_ome_zarr_metadata_channels_and_scale(tmp_path):
    image = _stack(frames=2, shape=(64, 72))  # read as CYX: two channels
    model = Denoiser("n2s", "CYX", **QUICK).fit(image)
    expected = model.predict(image, tile=TILE)
    model.predict_to(image, tmp_path / "c.ome.zarr", tile=TILE, block=(32, 32), scale={"Y": 0.2, "X": 0.2},
                     units={"Y": "µm", "X": "µm"})
    attrs = json.loads((tmp_path / "c.ome.zarr" / ".zattrs").read_text())
    axes = attrs["multiscales"][0]["axes"]
    assert [a["name"] for a in axes] == ["c", "y", "x"] and axes[1]["unit"] == "micrometer"
    back = read_image(tmp_path / "c.ome.zarr")
    assert (back.axes, back.scale, back.units) == ("CYX", {"Y": 0.2, "X": 0.2}, {"Y": "µm", "X": "µm"})
    np.testing.assert_array_equal(back.data, expected)


def test_3d_volume_streams_in_blocks_exactly(tmp_path):
    volume = _stack(frames=16, shape=(40, 48))  # ZYX
    model = Denoiser("n2s", "ZYX", patch_z=8, **QUICK).fit(volume)
    expected = model.predict(volume, tile=(8, 24, 24))
    model.predict_to(volume, tmp_path / "v.ome.zarr", tile=(8, 24, 24), block=(6, 20, 28))
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "v.ome.zarr" / "0"), mode="r")[...], expected)


# ----------------------------------------------------------------------------------- lazy inputs


class Recording:
    """An array-like (as h5py or any store would be) that records every region read from it."""

    def __init__(self, data, chunks):
        self.data, self.chunks, self.read = data, chunks, 0
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim

    def __getitem__(self, index):
        part = self.data[index]
        self.read += part.size
        return part


def test_training_on_a_lazy_stack_reads_patches_not_the_stack(monkeypatch):
    monkeypatch.setattr(normalize, "_MAX_VALUES", 50_000)  # "a stack too big to read whole"
    big = np.random.default_rng(0).poisson(100, (4096, 4096)).astype(np.uint16)
    source = Recording(big, chunks=(64, 64))
    model = Denoiser("n2v2", "YX", **QUICK).fit(source)
    assert model.trained
    assert 0 < source.read < 0.25 * big.size, f"read {source.read / big.size:.0%} of the stack to train"


def test_memory_maps_are_viewed_never_copied(tmp_path):
    data = np.arange(2 * 3 * 2 * 16 * 16, dtype=np.uint16).reshape(2, 3, 2, 16, 16)
    np.save(tmp_path / "a.npy", data)
    mapped = np.load(tmp_path / "a.npy", mmap_mode="r")
    part = mapped[:, 0]
    view = make_layout(part.shape, "CTYX").to_canonical(part)  # transposed and reshaped: still a view
    assert np.shares_memory(view, mapped)
    odd = make_layout(mapped.shape, "SCTYX").to_canonical(mapped)  # S and T not neighbours: lazy, no copy
    assert isinstance(odd, da.Array)
    np.testing.assert_array_equal(np.asarray(odd), data.transpose(0, 2, 1, 3, 4).reshape(4, 3, 16, 16))


@pytest.mark.parametrize("kind", ["memmap", "zarr", "dask"])
def test_lazy_inputs_predict_like_numpy(nnet, stack, tmp_path, kind):
    if kind == "memmap":
        np.save(tmp_path / "in.npy", stack)
        source = np.load(tmp_path / "in.npy", mmap_mode="r")
    elif kind == "zarr":  # chunks that fit no tile or block
        source = zarr.create_array(str(tmp_path / "in.zarr"), shape=stack.shape, chunks=(2, 37, 50),
                                   dtype=stack.dtype)
        source[...] = stack
    else:
        source = da.from_array(stack, chunks=(1, 33, 50))
    expected = nnet.predict(stack, tile=TILE)
    np.testing.assert_array_equal(nnet.predict(source, tile=TILE), expected)
    nnet.predict_to(source, tmp_path / "out.ome.zarr", tile=TILE, block=BLOCK)
    np.testing.assert_array_equal(read_image(tmp_path / "out.ome.zarr").data, expected)


# ----------------------------------------------------------------------------------- existing outputs, full disks


def test_existing_output_is_refused_unless_overwrite(nnet, stack, tmp_path):
    target = tmp_path / "d.ome.zarr"
    nnet.predict_to(stack[:1], target, tile=TILE)
    with pytest.raises(SelfDenoiseError, match="exists; pass --overwrite"):
        nnet.predict_to(stack, target, tile=TILE)
    assert read_image(target).data.shape == (1, 100, 120)  # untouched
    nnet.predict_to(stack, target, tile=TILE, overwrite=True)
    assert read_image(target).data.shape == stack.shape
    assert _listing(tmp_path) == ["d.ome.zarr"]


@pytest.mark.parametrize("suffix", [".ome.zarr", ".ome.tif"])
def test_disk_full_mid_write_leaves_nothing_under_the_final_name(nnet, stack, tmp_path, monkeypatch, suffix):
    target = tmp_path / f"d{suffix}"
    target_old = tmp_path / f"old{suffix}"
    nnet.predict_to(stack[:1], target_old, tile=TILE)
    before = read_image(target_old).data.copy()
    sink = streaming.ZarrSink if suffix == ".ome.zarr" else streaming.TiffSink
    real_write, calls = sink.write, []

    def write(self, index, data):
        calls.append(index)
        if len(calls) % 3 == 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, index, data)

    monkeypatch.setattr(sink, "write", write)
    with pytest.raises(SelfDenoiseError, match="the disk is full while writing"):
        nnet.predict_to(stack, target, tile=TILE, block=BLOCK)
    assert not target.exists()
    with pytest.raises(SelfDenoiseError, match="the disk is full"):  # replacing an output: the old one stays
        nnet.predict_to(stack, target_old, tile=TILE, block=BLOCK, overwrite=True)
    np.testing.assert_array_equal(read_image(target_old).data, before)
    assert _listing(tmp_path) == [target_old.name]


def test_tiff_output_needs_the_space_up_front(nnet, stack, tmp_path, monkeypatch):
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda path: type("U", (), {"free": 1000})())
    with pytest.raises(SelfDenoiseError, match="not enough free space on .*: needs .* MB, 1.0 KB free"):
        nnet.predict_to(stack, tmp_path / "d.ome.tif", tile=TILE)
    assert _listing(tmp_path) == []


# ----------------------------------------------------------------------------------- the command line


def test_cli_streams_into_ome_zarr_and_refuses_to_overwrite(nnet, stack, tmp_path, capsys):
    write_image(tmp_path / "in.ome.tif", stack, "TYX")
    nnet.save(tmp_path / "m.sdmodel")
    out = tmp_path / "out.ome.zarr"
    args = ["predict", str(tmp_path / "m.sdmodel"), str(tmp_path / "in.ome.tif"), "--out", str(out), "-q",
            "--tile", str(TILE)]
    assert cli_main(args) == 0
    np.testing.assert_array_equal(read_image(out).data, nnet.predict(stack, tile=TILE))
    assert cli_main(args) == 2
    assert "out.ome.zarr exists; pass --overwrite to replace it" in capsys.readouterr().err
    assert cli_main(args + ["--overwrite"]) == 0
    assert cli_main(args[:3] + ["--out", str(tmp_path / "in.ome.tif"), "-q"]) == 2  # the input itself
    assert cli_main(args[:3] + ["--out", str(tmp_path / "in2.ome.tif"), "--workers", "0"]) == 2
    assert "--workers must be a positive" in capsys.readouterr().err
