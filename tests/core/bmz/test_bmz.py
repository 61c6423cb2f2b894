"""bioimage.io packages: export (checked with bioimageio.core, offline), loading ours back, foreign packages
(axes mapping, shape constraints, pre/post-processing) and refusing bad or hostile ones."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import struct
import zipfile

import numpy as np
import pytest
import torch
import yaml

from napari_selfdenoise.cli import main
from napari_selfdenoise.core import bmz
from napari_selfdenoise.core.bmz import ForeignModel, export_bmz, is_bmz_package
from napari_selfdenoise.core.data.synthetic import add_noise, fluorescence_image
from napari_selfdenoise.core.denoiser import Denoiser
from napari_selfdenoise.core.errors import ModelFileError, SelfDenoiseError
from napari_selfdenoise.core.predict.predictor import Predictor
from napari_selfdenoise.core.trust.safetorch import check_pickle
from napari_selfdenoise.core.trust.state_dict import read_state_dict

TINY = {"patch": 32, "patch_z": 8, "batch": 2, "features": 4, "depth": 2, "steps_per_epoch": 3, "seed": 0,
        "device": "cpu"}


def noisy(shape, seed=0):
    # raw units far from [0, 1], so a missing normalisation step would show
    return (add_noise(fluorescence_image(shape, seed=seed), sigma=0.15, seed=seed + 1) * 1000 + 100).astype(np.float32)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("bmz")


@pytest.fixture(scope="module")
def model2d():
    return Denoiser("n2v2", "YX", steps=3, **TINY).fit(noisy((64, 64)))


@pytest.fixture(scope="module")
def package2d(model2d, folder):
    return export_bmz(model2d, folder / "n2v2.zip", authors=["Ada Lovelace <ada@example.org>"])


@pytest.fixture(scope="module")
def nnet2d(folder):
    model = Denoiser("nnet", "YX", steps=3, **TINY).fit(noisy((64, 64), seed=4))
    return model, export_bmz(model, folder / "nnet.zip")


@pytest.fixture(scope="module")
def package3d(folder):
    model = Denoiser("n2v", "ZYX", steps=2, **{**TINY, "features": 2}).fit(noisy((16, 40, 40), seed=2))
    return model, export_bmz(model, folder / "n2v3d.zip")


def rdf_of(path) -> dict:
    with zipfile.ZipFile(path) as archive:
        return yaml.safe_load(archive.read("rdf.yaml"))


def rezip(source, target, edit=None, replace: dict | None = None, drop=(), add: dict | None = None):
    """Copy a package: ``edit(rdf)`` changes rdf.yaml, ``replace``/``add`` change or add entries."""
    replace, add = dict(replace or {}), dict(add or {})
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as new:
        rdf = yaml.safe_load(old.read("rdf.yaml"))
        if edit is not None:
            edit(rdf)
        new.writestr("rdf.yaml", replace.pop("rdf.yaml", None) or yaml.safe_dump(rdf, sort_keys=False))
        for name in old.namelist():
            if name == "rdf.yaml" or name in drop:
                continue
            new.writestr(name, replace.pop(name, old.read(name)))
        for name, data in {**replace, **add}.items():
            new.writestr(name, data)
    return target


def foreign_copy(source, target, **kwargs):
    """Our package as someone else's: no native attachment, no config."""
    edit = kwargs.pop("edit", None)

    def strip(rdf):
        rdf["attachments"] = []
        rdf["config"] = {}
        if edit is not None:
            edit(rdf)

    drop = (bmz.NATIVE, *kwargs.pop("drop", ()))
    return rezip(source, target, strip, drop=drop, **kwargs)


def _test_model(path):
    core = pytest.importorskip("bioimageio.core")
    summary = core.test_model(str(path))
    assert summary.status == "passed", summary.format()


# --------------------------------------------------------------------------------------------- export


def test_2d_package_passes_bioimageio_core(package2d):
    _test_model(package2d)


def test_nnet_package_with_noise_std_output_passes_bioimageio_core(nnet2d):
    model, path = nnet2d
    rdf = rdf_of(path)
    assert [o["id"] for o in rdf["outputs"]] == ["denoised", "noise_std"]
    post = rdf["outputs"][1]["postprocessing"][0]["kwargs"]
    assert post["offset"] == 0 and post["gain"] == pytest.approx(model.normalization.scale[0])
    _test_model(path)


def test_3d_package_passes_bioimageio_core(package3d):
    _, path = package3d
    axes = rdf_of(path)["inputs"][0]["axes"]
    assert [a.get("id", a["type"]) for a in axes] == ["batch", "channel", "z", "y", "x"]
    _test_model(path)


def test_package_contents(model2d, package2d):
    with zipfile.ZipFile(package2d) as archive:
        names = set(archive.namelist())
        rdf = yaml.safe_load(archive.read("rdf.yaml"))
        test_input = np.load(io.BytesIO(archive.read("test_input.npy")), allow_pickle=False)
        test_output = np.load(io.BytesIO(archive.read("test_output_denoised.npy")), allow_pickle=False)
        cover = archive.read("cover.png")
        readme = archive.read("README.md").decode()
        for entry in [rdf["inputs"][0]["test_tensor"], rdf["weights"]["torchscript"], *rdf["attachments"]]:
            assert hashlib.sha256(archive.read(entry["source"])).hexdigest() == entry["sha256"]
    assert {"rdf.yaml", "weights.pt", "weights_torchscript.pt", "README.md", "cover.png", "environment.yaml",
            bmz.NATIVE} <= names
    assert rdf["format_version"].startswith("0.5.") and rdf["type"] == "model"
    assert rdf["authors"] == [{"name": "Ada Lovelace", "email": "ada@example.org"}]
    assert rdf["license"] == "CC-BY-4.0" and "denoising" in rdf["tags"] and "n2v2" in rdf["tags"]
    # the method's paper, cited in the rdf and the README
    assert rdf["cite"][0]["doi"] == "10.48550/arXiv.2211.08512" and "N2V2" in rdf["cite"][0]["text"]
    assert "N2V2" in readme and "doi.org/10.48550/arXiv.2211.08512" in readme
    # test tensors: a crop of the training data (raw units) and what the model makes of it
    assert test_input.shape == (1, 1, 64, 64) and test_input.dtype == np.float32
    assert np.array_equal(test_input, model2d.sample) and test_input.mean() > 50
    expected = model2d.predict(test_input[0, 0])
    assert np.allclose(test_output[0, 0], expected, rtol=1e-4, atol=1e-2)
    # normalisation as pre/post-processing, the native header in config
    pre = [step["id"] for step in rdf["inputs"][0]["preprocessing"]]
    assert pre == ["ensure_dtype", "scale_linear"]
    gain = rdf["inputs"][0]["preprocessing"][1]["kwargs"]["gain"]
    assert gain == pytest.approx(1 / model2d.normalization.scale[0])
    native = rdf["config"]["napari-selfdenoise"]
    assert native["method"] == "n2v2" and native["normalization"] == model2d.normalization.to_dict()
    assert rdf["weights"]["pytorch_state_dict"]["architecture"]["import_from"] == "napari_selfdenoise.core.nn.networks"
    # the cover: a 2:1 PNG
    assert cover.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", cover[16:24])
    assert (width, height) == (512, 256)


def test_multichannel_package(folder):
    image = np.stack([noisy((48, 48), seed=6), 0.5 * noisy((48, 48), seed=8)])
    model = Denoiser("n2s", "CYX", steps=2, **TINY).fit(image)
    path = export_bmz(model, folder / "cyx.zip")
    rdf = rdf_of(path)
    scale = rdf["inputs"][0]["preprocessing"][1]
    assert scale["kwargs"]["axis"] == "channel" and len(scale["kwargs"]["gain"]) == 2
    loaded = ForeignModel(bmz._Package(foreign_copy(path, folder / "cyx-foreign.zip")))
    assert loaded.in_channels == 2 and loaded.axes == "CYX"
    assert np.allclose(loaded.predict(image), model.predict(image), rtol=1e-4, atol=0.05)


def test_export_with_an_image_and_metadata(model2d, folder):
    image = noisy((100, 90), seed=9)
    path = export_bmz(model2d, folder / "custom.zip", image=image, name="My cells denoiser",
                      description="Denoises my cells.", authors=["A. Person (Some Institute)"], license="MIT",
                      tags=["cells"])
    rdf = rdf_of(path)
    assert rdf["name"] == "My cells denoiser" and rdf["description"] == "Denoises my cells."
    assert rdf["authors"] == [{"name": "A. Person", "affiliation": "Some Institute"}]
    assert rdf["license"] == "MIT" and rdf["tags"] == ["cells"]
    with zipfile.ZipFile(path) as archive:
        test_input = np.load(io.BytesIO(archive.read("test_input.npy")))
    assert test_input.shape == (1, 1, 100, 88)  # a centred crop on the network grid (multiples of 4)


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "bad/name"}, "may only hold"),
    ({"name": "abc"}, "5 to 128"),
    ({"license": "my own licence"}, "SPDX"),
    ({"authors": []}, "at least one author"),
    ({"description": "x" * 2000}, "1024"),
])
def test_export_refuses_bad_metadata(model2d, tmp_path, kwargs, message):
    with pytest.raises(SelfDenoiseError, match=message):
        export_bmz(model2d, tmp_path / "m.zip", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_bad_targets_and_inputs(model2d, package3d, tmp_path):
    with pytest.raises(SelfDenoiseError, match=r"\.zip"):
        export_bmz(model2d, tmp_path / "m.bioimage")
    with pytest.raises(SelfDenoiseError, match="does not exist"):
        export_bmz(model2d, tmp_path / "missing" / "m.zip")
    with pytest.raises(SelfDenoiseError, match="2D"):  # a 3D image for a 2D model
        export_bmz(model2d, tmp_path / "m.zip", image=noisy((8, 32, 32)), axes="ZYX")
    with pytest.raises(SelfDenoiseError, match="3D"):
        export_bmz(package3d[0], tmp_path / "m.zip", image=noisy((32, 32)), axes="YX")
    with pytest.raises(SelfDenoiseError, match="not trained"):
        export_bmz(Denoiser("n2v2"), tmp_path / "m.zip")
    assert list(tmp_path.iterdir()) == []


def test_export_without_a_kept_crop_asks_for_an_image(model2d, tmp_path):
    model = Denoiser.load(model2d.save(tmp_path / "m.sdmodel"))
    model.sample = None  # as in a file saved before the crop was kept
    with pytest.raises(SelfDenoiseError, match="--input"):
        export_bmz(model, tmp_path / "m.zip")
    assert export_bmz(model, tmp_path / "m.zip", image=noisy((64, 64))).is_file()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_export_to_a_read_only_folder(model2d, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(SelfDenoiseError, match="not writable"):
            export_bmz(model2d, folder / "m.zip")
    finally:
        folder.chmod(0o755)
    assert list(folder.iterdir()) == []


def test_export_to_a_read_only_folder_as_any_user(model2d, tmp_path, monkeypatch):
    """The same message when the OS refuses (e.g. root on a read-only mount)."""
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(SelfDenoiseError, match="not writable"):
        export_bmz(model2d, tmp_path / "m.zip")
    assert list(tmp_path.iterdir()) == []


def test_failed_export_leaves_nothing(model2d, tmp_path, monkeypatch):
    old = tmp_path / "m.zip"
    old.write_bytes(b"previous")

    def broken(*args, **kwargs):
        raise OSError("no space left on device")

    monkeypatch.setattr(bmz.export, "cover_png", broken)
    with pytest.raises(OSError):
        export_bmz(model2d, old)
    assert old.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["m.zip"]


# ------------------------------------------------------------------------------------- loading ours


def test_our_package_loads_as_the_full_denoiser(model2d, package2d, tmp_path):
    assert is_bmz_package(package2d) and not is_bmz_package(model2d.save(tmp_path / "m.sdmodel"))
    loaded = Denoiser.load(package2d)
    assert isinstance(loaded, Denoiser) and loaded.trainable
    image = noisy((70, 50), seed=3)
    assert np.array_equal(loaded.predict(image), model2d.predict(image))
    assert loaded.config == model2d.config and loaded.state.step == model2d.state.step
    assert loaded.state.optimizer is not None  # the optimizer state came along: it can go on training
    assert loaded.bmz_metadata["authors"][0]["name"] == "Ada Lovelace"
    events = list(loaded.train(image))
    assert events[0].step == model2d.state.step + 1


def test_nnet_package_loads_with_its_noise_std(nnet2d):
    model, path = nnet2d
    image = noisy((64, 64), seed=5)
    before, after = model.predict_outputs(image), Denoiser.load(path).predict_outputs(image)
    assert set(after) == {"denoised", "noise_std"}
    assert all(np.array_equal(before[k], after[k]) for k in before)


def test_fine_tuning_a_loaded_model_on_new_data(package2d):
    model = Denoiser.load(package2d)
    step = model.state.step
    model.prepare_fine_tuning("TYX", steps=2)
    new = np.stack([noisy((48, 48), seed=20), noisy((48, 48), seed=22)])
    model.fit(new)
    assert model.state.step == step + 2 and model.config.axes == "TYX"
    assert model.sample.shape == (1, 1, 48, 48)  # the kept crop now comes from the new data
    with pytest.raises(SelfDenoiseError, match="cannot change"):
        model.prepare_fine_tuning(features=64)


# ----------------------------------------------------------------------------------- foreign packages


def only_torchscript(rdf):
    del rdf["weights"]["pytorch_state_dict"]


def test_foreign_torchscript_package_predicts_like_ours(model2d, package2d, tmp_path):
    path = foreign_copy(package2d, tmp_path / "foreign.zip", edit=only_torchscript, drop=("weights.pt",))
    loaded = Denoiser.load(path, trust_code=True)
    assert isinstance(loaded, ForeignModel) and not loaded.trainable
    image = noisy((70, 90), seed=3)
    expected = model2d.predict(image)
    assert np.allclose(loaded.predict(image), expected, atol=1e-2)
    # T is looped over; tiles smaller than the image are blended
    stack = np.stack([image, image[::-1]])
    out = loaded.predict(stack, "TYX", tile=48)
    assert out.shape == stack.shape and np.abs(out[0] - expected).max() < 0.02 * np.ptp(image)
    with pytest.raises(SelfDenoiseError, match="2D"):
        loaded.check_axes((8, 64, 64), "ZYX")


def test_foreign_pytorch_state_dict_of_our_architecture(model2d, package2d, tmp_path):
    def only_state_dict(rdf):
        del rdf["weights"]["torchscript"]

    path = foreign_copy(package2d, tmp_path / "sd.zip", edit=only_state_dict, drop=("weights_torchscript.pt", bmz.NATIVE))
    image = noisy((64, 64), seed=3)
    assert np.allclose(Denoiser.load(path).predict(image), model2d.predict(image), atol=1e-2)


def written_image(path) -> np.ndarray:
    """A streamed output read back: OME-Zarr (array "0") or OME-TIFF."""
    if path.name.endswith(".zarr"):
        import zarr

        return np.asarray(zarr.open_array(str(path / "0"), mode="r"))
    import tifffile

    return tifffile.imread(path)


def test_foreign_model_predicts_a_big_input_block_by_block(model2d, package2d, tmp_path):
    """Issue 13: a foreign model had no ``predict_to``, so a big input (or an .ome.zarr output) ended in
    an AttributeError. It streams through the native block machinery, with the one tile grid: every
    block gets the in-memory values, whatever the tiles and blocks."""
    path = foreign_copy(package2d, tmp_path / "sd.zip", edit=lambda rdf: rdf["weights"].pop("torchscript"),
                        drop=("weights_torchscript.pt",))
    model = Denoiser.load(path)
    assert isinstance(model, ForeignModel) and isinstance(model, Predictor) and isinstance(model2d, Predictor)
    stack = np.stack([noisy((96, 88), seed=12), noisy((96, 88), seed=13)])
    np.save(tmp_path / "big.npy", stack)
    big = np.load(tmp_path / "big.npy", mmap_mode="r")  # lazy: read a block at a time
    expected = model.predict(stack, "TYX", tile=48)  # 3 x 3 overlapping tiles per frame
    assert np.allclose(expected, model2d.predict(stack, "TYX"), atol=0.02 * np.ptp(stack))
    for out, block in ((tmp_path / "out.ome.zarr", (40, 32)), (tmp_path / "out.ome.tif", None)):
        assert model.predict_to(big, out, "TYX", tile=48, block=block) == [out]
        written = written_image(out)
        assert written.shape == stack.shape and np.array_equal(written, expected)


def test_apply_job_streams_a_big_lazy_layer_through_a_foreign_model(package2d, tmp_path, monkeypatch):
    """The Apply widget's job streams a lazy layer too big to hold (here: over 1 kB) through
    ``Predictor.predict_to_steps``, foreign models included (it called the native streaming directly)."""
    import dask.array as da

    from napari_selfdenoise.core import jobs

    path = foreign_copy(package2d, tmp_path / "sd.zip", edit=lambda rdf: rdf["weights"].pop("torchscript"),
                        drop=("weights_torchscript.pt",))
    model = Denoiser.load(path)
    image = noisy((64, 72), seed=15)
    monkeypatch.setattr(jobs, "LAZY_THRESHOLD", 1024)
    job = jobs.predict_job(model, da.from_array(image, chunks=32), "YX")
    while True:
        try:
            next(job)
        except StopIteration as end:
            result = end.value
            break
    assert isinstance(result.outputs["denoised"], da.Array)  # streamed into a scratch OME-Zarr
    assert np.array_equal(np.asarray(result.outputs["denoised"]), model.predict(image))


def test_foreign_model_streaming_refusals_are_one_line(tmp_path):
    path = _foreign_package(tmp_path / "zmuv.zip", {
        "preprocessing": [{"id": "zero_mean_unit_variance", "kwargs": {"axes": ["y", "x"]}}]})
    model = Denoiser.load(path, trust_code=True)
    image = np.zeros((64, 64), np.float32)
    with pytest.raises(SelfDenoiseError, match="statistics of the whole image.*must fit in memory"):
        model.predict_to(image, tmp_path / "out.ome.zarr")
    with pytest.raises(SelfDenoiseError, match="no noise-std output"):
        model.predict_to(image, tmp_path / "out.ome.zarr", noise_std=tmp_path / "std.ome.zarr")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["zmuv.zip"]


def test_cli_streams_a_foreign_model_into_ome_zarr(package2d, tmp_path, capsys):
    """``selfdenoise predict FOREIGN.zip IMAGE --out X.ome.zarr`` takes the streamed path (a traceback before)."""
    path = foreign_copy(package2d, tmp_path / "sd.zip", edit=lambda rdf: rdf["weights"].pop("torchscript"),
                        drop=("weights_torchscript.pt",))
    image = noisy((64, 72), seed=14)
    np.save(tmp_path / "image.npy", image)
    out = tmp_path / "denoised.ome.zarr"
    assert main(["predict", str(path), str(tmp_path / "image.npy"), "--out", str(out), "--quiet"]) == 0
    assert np.array_equal(written_image(out), Denoiser.load(path).predict(image))


def test_foreign_3d_package(package3d, tmp_path):
    model, source = package3d
    loaded = Denoiser.load(foreign_copy(source, tmp_path / "f3d.zip"))
    image = noisy((16, 40, 48), seed=7)
    assert np.allclose(loaded.predict(image), model.predict(image), atol=1e-2)
    with pytest.raises(SelfDenoiseError, match="3D.*'YX'"):
        loaded.predict(noisy((48, 48)), "YX")


class ChannelsLast(torch.nn.Module):
    """A foreign model with (batch, y, x, channel) axes that insists on tiles in multiples of 16."""

    def forward(self, x):
        if x.shape[1] % 16 != 0 or x.shape[2] % 16 != 0 or x.shape[3] != 1:
            raise RuntimeError("tile shape not allowed")
        return x * 2.0 + 1.0


def _foreign_package(path, rdf_extra: dict, module=None, version="0.5"):
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module or ChannelsLast()), buffer)
    weights = buffer.getvalue()
    if version == "0.5":
        space = lambda a: {"type": "space", "id": a, "size": {"min": 32, "step": 16}}
        ref = lambda a: {"type": "space", "id": a, "size": {"tensor_id": "input0", "axis_id": a}, "halo": 4}
        inputs = [{"id": "input0", "axes": [{"type": "batch"}, space("y"), space("x"),
                                           {"type": "channel", "channel_names": ["c0"]}]}]
        outputs = [{"id": "output0", "axes": [{"type": "batch"}, ref("y"), ref("x"),
                                             {"type": "channel", "channel_names": ["c0"]}]}]
    else:
        inputs = [{"name": "input0", "axes": "byxc", "data_type": "float32",
                   "shape": {"min": [1, 32, 32, 1], "step": [0, 16, 16, 0]}}]
        outputs = [{"name": "output0", "axes": "byxc", "data_type": "float32", "halo": [0, 4, 4, 0],
                    "shape": {"reference_tensor": "input0", "scale": [1, 1, 1, 1], "offset": [0, 0, 0, 0]}}]
    rdf = {"format_version": "0.5.4" if version == "0.5" else "0.4.10", "type": "model",
           "name": "someone else's model", "inputs": inputs, "outputs": outputs,
           "weights": {"torchscript": {"source": "model.pt", "sha256": hashlib.sha256(weights).hexdigest()}}}
    for key, value in rdf_extra.items():
        if key == "preprocessing":
            inputs[0]["preprocessing"] = value
        elif key == "postprocessing":
            outputs[0]["postprocessing"] = value
        else:
            rdf[key] = value
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("rdf.yaml", yaml.safe_dump(rdf))
        archive.writestr("model.pt", weights)
    return path


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_foreign_axes_order_and_shape_constraints(tmp_path, version):
    path = _foreign_package(tmp_path / "cl.zip", {}, version=version)
    model = Denoiser.load(path, trust_code=True)
    assert model.axes == "YX" and model.dims == 2
    image = np.random.default_rng(0).random((50, 70), dtype=np.float32)
    assert np.allclose(model.predict(image), image * 2 + 1, atol=1e-5)
    assert np.allclose(model.predict(image, tile=20), image * 2 + 1, atol=1e-5)  # tiles rounded up to 32 + k*16
    stack = np.stack([image, image + 1])
    assert np.allclose(model.predict(stack, "TYX"), stack * 2 + 1, atol=1e-5)


def test_foreign_processing_steps(tmp_path):
    path = _foreign_package(tmp_path / "proc.zip", {
        "preprocessing": [{"id": "zero_mean_unit_variance", "kwargs": {"axes": ["y", "x"]}}],
        "postprocessing": [{"id": "scale_linear", "kwargs": {"gain": 0.5, "offset": -0.5}},
                           {"id": "clip", "kwargs": {"min": -1.0, "max": 1.0}}],
    })
    image = np.random.default_rng(1).random((64, 64), dtype=np.float32) * 100
    z = (image - image.mean()) / (image.std() + 1e-6)
    assert np.allclose(Denoiser.load(path, trust_code=True).predict(image), np.clip(z, -1, 1), atol=1e-4)


@pytest.mark.parametrize("extra, message", [
    ({"preprocessing": [{"id": "stardist_postprocessing"}]}, "not supported"),
    ({"preprocessing": [{"id": "scale_range", "kwargs": {"mode": "per_dataset"}}]}, "dataset statistics"),
    ({"weights": {"onnx": {"source": "model.onnx"}}}, "onnx weights"),
    ({"weights": {"pytorch_state_dict": {"source": "model.pt", "architecture": {"callable": "system",
                                                                                "import_from": "os"}}}},
     "never imports code"),
    ({"weights": {"torchscript": {"source": "https://example.org/model.pt"}}}, "a link"),
    ({"weights": {"torchscript": {"source": "other.pt"}}}, "missing from the package"),
    ({"weights": {"torchscript": {"source": "model.pt", "sha256": "0" * 64}}}, "sha256"),
    ({"weights": {"torchscript": {"source": "../model.pt"}}}, "outside the package"),
    ({"inputs": []}, "inputs or outputs"),
    ({"inputs": [{"id": "a", "axes": "qyx"}]}, "axes are not understood"),
    ({"outputs": [{"id": "a", "axes": [{"type": "batch"}, {"type": "space", "id": "y", "size": 8},
                                      {"type": "space", "id": "x", "size": 8}]}]}, "input's size"),
    ({"type": "dataset"}, "not a model"),
    ({"format_version": "0.7.0"}, "format_version"),
])
def test_foreign_package_problems_are_clear(tmp_path, extra, message):
    path = _foreign_package(tmp_path / "bad.zip", extra)
    with pytest.raises(ModelFileError) as info:
        Denoiser.load(path, trust_code=True)
    assert re.search(message, str(info.value)), str(info.value)


def test_two_inputs_or_time_axes_are_refused(tmp_path):
    path = _foreign_package(tmp_path / "two.zip", {})
    two = rezip(path, tmp_path / "two-in.zip", lambda rdf: rdf["inputs"].append(dict(rdf["inputs"][0], id="b")))
    with pytest.raises(ModelFileError, match="2 input"):
        Denoiser.load(two)

    def time_axis(rdf):
        rdf["inputs"][0]["axes"].insert(1, {"type": "time", "size": 4})

    with pytest.raises(ModelFileError, match="time"):
        Denoiser.load(rezip(path, tmp_path / "time.zip", time_axis))


# ------------------------------------------------------------------------------------- damaged files


@pytest.mark.parametrize("keep", [0.3, 0.9])
def test_truncated_package(package2d, tmp_path, keep):
    data = package2d.read_bytes()
    path = tmp_path / "cut.zip"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ModelFileError, match="(?i)truncated|damaged"):
        Denoiser.load(path)


def test_corrupted_rdf_and_missing_fields(package2d, tmp_path):
    path = rezip(package2d, tmp_path / "yaml.zip", replace={"rdf.yaml": b"inputs: [unclosed"})
    with pytest.raises(ModelFileError, match="not valid YAML"):
        Denoiser.load(path)

    def no_outputs(rdf):
        del rdf["outputs"]
        rdf["attachments"] = []

    with pytest.raises(ModelFileError, match="inputs or outputs"):
        Denoiser.load(rezip(package2d, tmp_path / "noout.zip", no_outputs))


def test_native_attachment_must_match_its_hash(package2d, tmp_path, model2d):
    other = Denoiser("n2v2", "YX", steps=1, **TINY).fit(noisy((64, 64), seed=30))
    path = rezip(package2d, tmp_path / "swapped.zip", replace={bmz.NATIVE: other.to_bytes()})
    with pytest.raises(ModelFileError, match="sha256"):
        Denoiser.load(path)


# ------------------------------------------------------------------------------ hostile files: pickles


class SystemPayload:
    """Unpickling this runs ``touch <marker>``: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def test_payload_is_live(tmp_path):
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(SystemPayload(marker)))
    assert marker.exists()


def _evil_torchscript(package, marker, entry: str = "data.pkl") -> bytes:
    """Our TorchScript weights with ``entry`` swapped for a pickle that calls os.system."""
    with zipfile.ZipFile(package) as archive:
        good = archive.read("weights_torchscript.pt")
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(good)) as old, zipfile.ZipFile(out, "w") as new:
        for name in old.namelist():
            data = pickle.dumps(SystemPayload(marker), protocol=2) if name.endswith(f"/{entry}") else old.read(name)
            new.writestr(name, data)
    return out.getvalue()


@pytest.mark.parametrize("entry", ["data.pkl", "constants.pkl"])
def test_torchscript_with_a_pickle_payload_is_refused(package2d, tmp_path, entry):
    marker = tmp_path / "pwned"
    evil = _evil_torchscript(package2d, marker, entry)
    def unchecked_torchscript(rdf):
        only_torchscript(rdf)
        rdf["weights"]["torchscript"].pop("sha256")

    path = foreign_copy(package2d, tmp_path / "evil-ts.zip", replace={"weights_torchscript.pt": evil},
                        edit=unchecked_torchscript, drop=("weights.pt",))
    with pytest.raises(ModelFileError, match=r"system.*refusing"):
        Denoiser.load(path, trust_code=True)
    assert not marker.exists()


def test_torch_jit_load_itself_does_not_run_the_payload(package2d, tmp_path):
    """What our check guards against, documented: TorchScript's unpickler knows no Python globals."""
    marker = tmp_path / "pwned"
    with pytest.raises(RuntimeError, match="Unknown type name"):
        torch.jit.load(io.BytesIO(_evil_torchscript(package2d, marker)))
    assert not marker.exists()


@pytest.mark.parametrize("entry", ["weights.pt", bmz.NATIVE])
def test_pickled_weights_in_a_package_are_refused(package2d, tmp_path, entry):
    marker = tmp_path / "pwned"
    buffer = io.BytesIO()
    torch.save({"net.head.weight": SystemPayload(marker)}, buffer)

    def point_at_state_dict(rdf):
        del rdf["weights"]["torchscript"]
        rdf["weights"]["pytorch_state_dict"].pop("sha256")
        for attachment in rdf["attachments"]:
            attachment.pop("sha256")

    path = rezip(package2d, tmp_path / "evil.zip", point_at_state_dict, replace={entry: buffer.getvalue()},
                 drop=("weights_torchscript.pt",) + (() if entry == bmz.NATIVE else (bmz.NATIVE,)))
    if entry == "weights.pt":  # without the native file: the pytorch_state_dict route
        path = foreign_copy(path, tmp_path / "evil-sd.zip")
    with pytest.raises(ModelFileError, match="(?i)refusing|not a napari-selfdenoise model|lacks"):
        Denoiser.load(path)
    assert not marker.exists()


def test_pickle_checker_and_state_dict_reader(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(ModelFileError, match="system"):
        check_pickle(pickle.dumps(SystemPayload(marker), protocol=2), "x")
    with pytest.raises(ModelFileError, match="STACK_GLOBAL|system"):
        check_pickle(pickle.dumps(SystemPayload(marker), protocol=4), "x")
    # a real state dict reads back exactly, without unpickling
    state = {"a": torch.randn(3, 4), "b": torch.arange(5), "c": torch.randn(2, 3).t()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    got = read_state_dict(buffer.getvalue(), "x")
    assert set(got) == set(state) and all(torch.equal(got[k], state[k]) for k in state)
    # an old-style (non-zip) torch.save file is refused rather than unpickled
    buffer = io.BytesIO()
    torch.save(state, buffer, _use_new_zipfile_serialization=False)
    with pytest.raises(ModelFileError, match="refusing"):
        read_state_dict(buffer.getvalue(), "x")
    assert not marker.exists()


# ------------------------------------------------------------------ hostile files: bombs and traversal


@pytest.mark.parametrize("name", ["../escape.txt", "/etc/escape.txt", "a/../../escape.txt", "C:escape.txt",
                                  "a\\..\\escape.txt"])
def test_path_traversal_names_are_refused(package2d, tmp_path, name):
    path = rezip(package2d, tmp_path / "traversal.zip", add={name: b"x"})
    with pytest.raises(ModelFileError, match="outside the archive"):
        Denoiser.load(path)
    assert not (tmp_path.parent / "escape.txt").exists()


def test_zip_bomb_in_a_package_is_refused(package2d, tmp_path):
    bomb = b"\0" * (64 * 1024 * 1024)  # 64 MiB of zeros: deflates about 1000:1
    path = rezip(package2d, tmp_path / "bomb.zip", replace={"rdf.yaml": b"# " + bomb})
    assert path.stat().st_size < 2 * 1024 * 1024
    with pytest.raises(ModelFileError, match="(?i)large"):
        Denoiser.load(path)


def test_the_source_never_unpickles():
    """A guard on the code itself: no torch.load, pickle.load(s) or np.load with pickles anywhere."""
    from pathlib import Path

    import napari_selfdenoise

    root = Path(napari_selfdenoise.__file__).parent
    for path in root.rglob("*.py"):
        code = "\n".join(line.split("#")[0] for line in path.read_text(encoding="utf-8").splitlines())
        code = re.sub(r'"""[\s\S]*?"""', "", code)  # docstrings may name them
        for banned in ("torch.load(", "pickle.load", "allow_pickle=True", "__import__(", "importlib.import_module("):
            assert banned not in code, f"{path.name} uses {banned}"


def test_no_import_cycle_between_bmz_and_the_denoiser():
    """Issue 17: bmz imported denoiser.py inside functions and denoiser.py imported bmz inside functions
    (a hidden cycle). Now denoiser.py imports bmz at its top, and nothing under bmz imports denoiser.py."""
    import ast
    from pathlib import Path

    from napari_selfdenoise import core

    def imports(path, top_level_only=False):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nodes = tree.body if top_level_only else ast.walk(tree)
        return {("." * n.level) + (n.module or "") for n in nodes if isinstance(n, ast.ImportFrom)}

    root = Path(core.__file__).parent
    for path in (root / "bmz").glob("*.py"):
        assert not {m for m in imports(path) if m.endswith("denoiser")}, f"bmz/{path.name} imports denoiser.py"
    denoiser = root / "denoiser.py"
    assert ".bmz" in imports(denoiser, top_level_only=True)
    assert {m for m in imports(denoiser) if "bmz" in m} <= imports(denoiser, top_level_only=True)

