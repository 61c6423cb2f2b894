"""Backward compatibility: model files written by earlier versions (tests/data, made by make_compat.py)
load and predict what they predicted when they were made."""

from __future__ import annotations

import importlib.util
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from napari_selfdenoise.core.denoiser import Denoiser

DATA = Path(__file__).resolve().parents[2] / "data"
FIXTURES = sorted(DATA.glob("compat-*.sdmodel"))


def _maker():
    spec = importlib.util.spec_from_file_location("make_compat", DATA / "make_compat.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fixtures_are_there_and_small():
    assert {p.name for p in FIXTURES} >= {"compat-0.1.0-n2v2.sdmodel", "compat-0.1.0-nnet.sdmodel"}
    assert all(p.stat().st_size < 32 * 1024 for p in FIXTURES)


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_old_model_file_predicts_the_same(path):
    with zipfile.ZipFile(path) as archive:
        header = json.loads(archive.read("selfdenoise.json"))
    model = Denoiser.load(path)
    assert model.package_version == header["package_version"]
    expected = np.load(path.with_name(f"{path.stem}-expected.npy"), allow_pickle=False)
    outputs = model.predict_outputs(_maker().test_image())
    got = np.stack([outputs[k] for k in model.method.outputs])
    assert got.shape == expected.shape and got.dtype == np.float32
    # float32 results from other torch builds or CPUs may differ in the last bits, not more
    assert np.allclose(got, expected, rtol=1e-4, atol=1e-5 * float(np.ptp(expected))), np.abs(got - expected).max()


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_old_model_file_goes_on_training(path):
    model = Denoiser.load(path)
    step = model.state.step
    model.fit(_maker().training_image())
    assert model.state.step == step + model.config.max_steps


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_an_old_file_keeps_its_constant_learning_rate(path):
    """Files from before lr_decay trained at a constant rate: loaded, they fine-tune at one too (the
    default for new models decays)."""
    with zipfile.ZipFile(path) as archive:
        assert "lr_decay" not in json.loads(archive.read("selfdenoise.json"))["config"]
    model = Denoiser.load(path)
    assert model.config.lr_decay == 0.0 and Denoiser().config.lr_decay > 0
    model.fit(_maker().training_image())
    assert set(model.state.history["lr"]) == {model.config.lr}
