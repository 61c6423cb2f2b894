"""Model files: round trips, resuming, and refusing pickles, damaged, foreign, newer and oversized files."""

from __future__ import annotations

import io
import json
import pickle
import re
import struct
import zipfile

import numpy as np
import pytest
import torch
from safetensors.torch import save as save_safetensors

from napari_selfdenoise.core.data.synthetic import add_noise, fluorescence_image
from napari_selfdenoise.core.denoiser import Denoiser
from napari_selfdenoise.core.errors import ModelFileError, SelfDenoiseError
from napari_selfdenoise.core.io import modelfile
from napari_selfdenoise.core.io.modelfile import FORMAT_VERSION, HEADER, SAMPLE, TRAINING, WEIGHTS, load_model
from napari_selfdenoise.core.methods import method_names

QUICK = dict(patch=32, batch=4, features=8, steps_per_epoch=3, seed=0, device="cpu")


@pytest.fixture(scope="module")
def image():
    return add_noise(fluorescence_image((64, 64), seed=11), sigma=0.15, seed=12)


@pytest.fixture(scope="module")
def saved(image, tmp_path_factory):
    """A trained n2v2 model saved to disk (shared, read-only)."""
    model = Denoiser("n2v2", "YX", steps=6, **QUICK).fit(image)
    path = model.save(tmp_path_factory.mktemp("model") / "cells.sdmodel")
    return model, path


def _rezip(source, target, replace: dict[str, bytes]):
    """Copy a zip, replacing (or adding) entries."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as new:
        for name in old.namelist():
            if name not in replace:
                new.writestr(name, old.read(name))
        for name, data in replace.items():
            new.writestr(name, data)
    return target


def refused(path, pattern: str | None = None, load=Denoiser.load) -> str:
    """Load ``path`` expecting a ``ModelFileError``; check its message, with the path left out (the
    test-made folder names must not be what matches the pattern)."""
    with pytest.raises(ModelFileError) as info:
        load(path)
    message = str(info.value).replace(str(path), "<path>")
    if pattern is not None:
        assert re.search(pattern, message), message
    return message


# ------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("method", method_names(include_classic=False))
def test_round_trip_identical_predictions(method, image, tmp_path):
    model = Denoiser(method, "YX", steps=4, **QUICK).fit(image)
    path = model.save(tmp_path / "m.sdmodel")
    assert path.is_file() and zipfile.is_zipfile(path)
    loaded = Denoiser.load(path)
    before, after = model.predict_outputs(image), loaded.predict_outputs(image)
    assert set(before) == set(after) == set(model.method.outputs)
    for name in before:
        assert np.array_equal(before[name], after[name]), name
    assert loaded.history == model.history and len(loaded.history["step"]) > 0
    assert loaded.config == model.config
    assert loaded.normalization == model.normalization
    assert loaded.state.step == model.state.step == 4
    assert loaded.state.best_val_loss == model.state.best_val_loss


def test_file_is_a_plain_zip_with_json_header(saved):
    _, path = saved
    with zipfile.ZipFile(path) as archive:
        assert {HEADER, WEIGHTS, TRAINING} <= set(archive.namelist())
        header = json.loads(archive.read(HEADER))
    assert header["format_version"] == FORMAT_VERSION
    assert header["method"] == "n2v2" and header["axes"] == "YX"
    assert header["training"]["step"] == 6


def test_save_without_training_state(saved, tmp_path, image):
    model, _ = saved
    path = model.save(tmp_path / "small.sdmodel", include_training_state=False)
    with zipfile.ZipFile(path) as archive:
        assert TRAINING not in archive.namelist()
    loaded = Denoiser.load(path)
    assert loaded.state.optimizer is None
    assert np.array_equal(loaded.predict(image), model.predict(image))


def test_resume_continues_steps_and_optimizer(image, tmp_path):
    model = Denoiser("n2v2", "YX", steps=6, **QUICK).fit(image)
    saved_optimizer = model.state.optimizer
    loaded = Denoiser.load(model.save(tmp_path / "m.sdmodel"))
    assert loaded.trained and loaded.state.step == 6
    # The optimizer state came back: same moments, same counters, same hyper-parameters.
    restored = loaded.state.optimizer
    assert restored is not None and set(restored["state"]) == set(saved_optimizer["state"])
    for pid, entries in saved_optimizer["state"].items():
        for key, value in entries.items():
            got = torch.as_tensor(restored["state"][pid][key]).float()
            assert torch.equal(got, torch.as_tensor(value).float()), (pid, key)
    assert restored["param_groups"][0]["lr"] == saved_optimizer["param_groups"][0]["lr"]

    events = list(loaded.train(image))
    steps = [e.step for e in events]
    assert steps == list(range(7, 13)), steps
    assert loaded.history["step"] == [3, 6, 9, 12]
    # Adam's own step counter went on from the saved 6: the optimizer state was really loaded.
    assert float(loaded.state.optimizer["state"][0]["step"]) == 12
    # And it differs from a fresh optimizer trained the same 6 steps from the loaded weights.
    fresh = Denoiser.load(model.save(tmp_path / "fresh.sdmodel", include_training_state=False))
    fresh.fit(image)
    assert float(fresh.state.optimizer["state"][0]["step"]) == 6


# ------------------------------------------------------------------------- refusing pickles


class _Payload:
    """Unpickling this creates ``marker``: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_payload_is_live(tmp_path):
    """The payload used below really runs code when unpickled (so the refusals are meaningful)."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_Payload(marker))).close()
    assert marker.exists()


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_pickle_weights_in_model_zip_refused(saved, tmp_path, how):
    _, good = saved
    marker = tmp_path / "pwned"
    if how == "pickle":
        payload = pickle.dumps({"w": _Payload(marker)})
    else:
        buffer = io.BytesIO()
        torch.save({"w": _Payload(marker)}, buffer)
        payload = buffer.getvalue()
    for entry in (WEIGHTS, TRAINING, SAMPLE):
        path = _rezip(good, tmp_path / f"evil-{entry}.sdmodel", {entry: payload})
        refused(path, "safetensors", load=load_model)
        refused(path, "safetensors")
    assert not marker.exists()


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_pickle_file_as_model_refused(tmp_path, how):
    marker = tmp_path / "pwned"
    path = tmp_path / ("model.pkl" if how == "pickle" else "model.pt")
    if how == "pickle":
        path.write_bytes(pickle.dumps(_Payload(marker)))
    else:
        torch.save({"state_dict": {"w": torch.zeros(3)}, "evil": _Payload(marker)}, path)
    refused(path, "not a napari-selfdenoise model")
    assert not marker.exists()


@pytest.mark.parametrize("name", ["../../escape.txt", "/tmp/escape.txt", "sub/../../escape.txt", "C:\\escape.txt"])
def test_entry_names_that_escape_the_folder_refused(saved, tmp_path, name):
    """No entry is ever extracted, but a file whose names could escape a folder is hostile: refused."""
    _, good = saved
    path = _rezip(good, tmp_path / "traversal.sdmodel", {name: b"x"})
    refused(path, "outside the archive")
    refused(path, "outside the archive", load=load_model)


def test_sample_crop_is_kept_and_round_trips(saved, image):
    model, path = saved
    loaded = Denoiser.load(path)
    assert loaded.sample is not None and loaded.sample.shape == (1, 1, 64, 64)
    assert np.array_equal(loaded.sample, model.sample)
    assert np.array_equal(loaded.sample[0, 0], image.astype(np.float32))  # the 64x64 image is the crop


# --------------------------------------------------------------- damaged and foreign files


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.95])
def test_truncated_file(saved, tmp_path, keep):
    _, good = saved
    data = good.read_bytes()
    path = tmp_path / "cut.sdmodel"
    path.write_bytes(data[: int(len(data) * keep)])
    message = refused(path, "(?i)truncated|damaged")
    assert "<path>" in message


def test_corrupted_entry(saved, tmp_path):
    _, good = saved
    data = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as archive:
        info = archive.getinfo(WEIGHTS)
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)  # compressed bytes of the entry
    for i in range(start + 10, start + 40):
        data[i] ^= 0xFF
    path = tmp_path / "flipped.sdmodel"
    path.write_bytes(bytes(data))
    refused(path, "(?i)damaged|truncated")


def test_missing_and_non_zip_files(tmp_path):
    refused(tmp_path / "nothing.sdmodel", "not found")
    text = tmp_path / "notes.sdmodel"
    text.write_text("just some text, not a model\n")
    refused(text, "not a napari-selfdenoise model")
    refused(tmp_path)  # a folder


def test_zip_of_another_kind(tmp_path):
    path = tmp_path / "photos.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "holiday photos")
    refused(path, "not a napari-selfdenoise model")


def test_header_of_another_format(saved, tmp_path):
    _, good = saved
    with zipfile.ZipFile(good) as archive:
        header = json.loads(archive.read(HEADER))
    other = json.dumps({**header, "format": "something-else"})
    path = _rezip(good, tmp_path / "other.sdmodel", {HEADER: other})
    refused(path, "not a napari-selfdenoise model")
    path = _rezip(good, tmp_path / "badjson.sdmodel", {HEADER: b"{not json"})
    refused(path, "JSON")


def test_newer_format_version_asks_to_upgrade(saved, tmp_path):
    _, good = saved
    with zipfile.ZipFile(good) as archive:
        header = json.loads(archive.read(HEADER))
    path = _rezip(good, tmp_path / "future.sdmodel",
                  {HEADER: json.dumps({**header, "format_version": FORMAT_VERSION + 1})})
    refused(path, "(?i)upgrade")
    # The same file with the current version loads: only the version made the difference.
    same = _rezip(good, tmp_path / "same.sdmodel", {HEADER: json.dumps(header)})
    assert Denoiser.load(same).trained


def test_weights_that_do_not_match_the_architecture(saved, tmp_path):
    model, good = saved
    weights = {k: v.clone() for k, v in model.network.state_dict().items()}
    weights.pop(next(iter(weights)))
    path = _rezip(good, tmp_path / "short.sdmodel", {WEIGHTS: save_safetensors(weights)})
    refused(path, "does not match")


# --------------------------------------------------------------------------------- zip bombs


def test_zip_bomb_by_ratio_refused(saved, tmp_path):
    _, good = saved
    # Valid safetensors that deflate ~1000:1: only the size check can refuse them.
    bomb = save_safetensors({"zeros": torch.zeros(8 * 1024 * 1024)})  # 32 MiB of zeros
    path = _rezip(good, tmp_path / "bomb.sdmodel", {WEIGHTS: bomb})
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(WEIGHTS)
        assert info.file_size > 100 * info.compress_size
        assert archive.read(WEIGHTS) == bomb  # a sound entry
    assert path.stat().st_size < 1024 * 1024
    refused(path, "(?i)large", load=load_model)


def test_zip_bomb_by_declared_size_refused(saved, tmp_path):
    _, good = saved
    data = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as archive:
        info = archive.getinfo(HEADER)
    # Patch the entry's sizes in the central directory: ~4 GiB declared, ~2 GiB compressed (a plausible
    # ratio: only the absolute cap can refuse it).
    offset = data.find(b"PK\x01\x02")
    while offset != -1:
        name_length = struct.unpack_from("<H", data, offset + 28)[0]
        if data[offset + 46 : offset + 46 + name_length].decode() == info.filename:
            struct.pack_into("<II", data, offset + 20, 0x7FFFFFF0, 0xFFFFFFF0)
            break
        offset = data.find(b"PK\x01\x02", offset + 4)
    assert offset != -1
    path = tmp_path / "declared.sdmodel"
    path.write_bytes(bytes(data))
    with zipfile.ZipFile(path) as archive:
        assert archive.getinfo(HEADER).file_size > 2 * 1024**3 > archive.getinfo(HEADER).compress_size
    refused(path, "(?i)large")


# ------------------------------------------------------------------------------ safe saving


def test_save_to_missing_folder(saved, tmp_path):
    model, _ = saved
    target = tmp_path / "missing" / "m.sdmodel"
    with pytest.raises(SelfDenoiseError, match="does not exist"):
        model.save(target)
    assert list(tmp_path.iterdir()) == []


def test_save_untrained_model_refused(tmp_path):
    with pytest.raises(SelfDenoiseError, match="not trained"):
        Denoiser("n2v2").save(tmp_path / "m.sdmodel")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()],
                         ids=["error", "interrupt"])
def test_interrupted_save_leaves_no_file(saved, tmp_path, monkeypatch, error):
    model, _ = saved
    target = tmp_path / "m.sdmodel"
    calls = []

    def failing_save(tensors):
        calls.append(len(tensors))
        raise error

    monkeypatch.setattr(modelfile, "save_safetensors", failing_save)
    with pytest.raises(type(error)):
        model.save(target)
    assert calls, "the save must have started writing"
    assert list(tmp_path.iterdir()) == []


def test_interrupted_save_keeps_the_previous_file(saved, tmp_path, monkeypatch):
    model, _ = saved
    target = model.save(tmp_path / "m.sdmodel")
    before = target.read_bytes()
    real_writestr = zipfile.ZipFile.writestr

    def writestr(self, name, data, *args, **kwargs):
        if name == WEIGHTS:
            raise OSError("no space left on device")
        return real_writestr(self, name, data, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "writestr", writestr)
    with pytest.raises(OSError):
        model.save(target)
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.sdmodel"]
    assert Denoiser.load(target).trained
