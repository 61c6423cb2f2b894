"""Prediction: tiling matches whole-image inference, TTA, axes, units, dtypes, inputs left untouched."""

from __future__ import annotations

import numpy as np
import pytest

from napari_selfdenoise.core.data.synthetic import add_noise, fluorescence_image
from napari_selfdenoise.core.denoiser import Denoiser
from napari_selfdenoise.core.methods import method_names

METHODS = method_names(include_classic=False)
QUICK = dict(patch=32, batch=4, features=8, steps_per_epoch=5)


def _noisy(shape, seed=0, sigma=0.15):
    return add_noise(fluorescence_image(shape, seed=seed), sigma=sigma, seed=seed + 100)


def _trained(method, image, axes, steps=10, **options):
    return Denoiser(method, axes, steps=steps, seed=0, **{**QUICK, **options}).fit(image)


# ----------------------------------------------------------------------------------- tiling


@pytest.mark.parametrize("method", METHODS)
def test_tiled_equals_whole_2d(method):
    image = _noisy((192, 160), seed=1)
    model = _trained(method, image, "YX", steps=4)
    whole = model.predict_outputs(image)  # default tile (512) covers the image: one tile
    tiled = model.predict_outputs(image, tile=96)
    calls = []
    model.predict(image, tile=96, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1][0] == calls[-1][1] > 1, "tile 96 must split a 192x160 image"
    assert set(tiled) == set(whole) == set(model.method.outputs)
    for name in whole:
        assert tiled[name].shape == image.shape
        np.testing.assert_allclose(tiled[name], whole[name], atol=1e-4, rtol=0, err_msg=name)


@pytest.mark.parametrize("method", METHODS)
def test_tiled_equals_whole_3d(method):
    image = _noisy((96, 40, 40), seed=2)
    model = _trained(method, image, "ZYX", steps=2, patch_z=8, batch=2)
    whole = model.predict_outputs(image, tile=(96, 40, 40))
    calls = []
    tiled = model.predict_outputs(image, progress=lambda done, total: calls.append(total))  # Z tile 64 < 96
    assert calls[-1] > 1
    for name in whole:
        assert tiled[name].shape == image.shape and tiled[name].dtype == np.float32
        np.testing.assert_allclose(tiled[name], whole[name], atol=1e-4, rtol=0, err_msg=name)


# -------------------------------------------------------------------------------------- TTA


@pytest.fixture(scope="module")
def n2v2_model():
    image = _noisy((128, 128), seed=3)
    return _trained("n2v2", image, "YX", steps=30, features=16, batch=8), image


def test_tta_close_but_different(n2v2_model):
    model, image = n2v2_model
    plain = model.predict(image)
    tta = model.predict(image, tta=True)
    assert tta.shape == image.shape and tta.dtype == np.float32
    diff = np.abs(tta - plain)
    assert diff.max() > 1e-4, "TTA should average 8 different predictions"
    # Much closer to the plain prediction than the noise level (0.15).
    assert diff.mean() < 0.015, diff.mean()


def test_tta_3d_and_non_square():
    image = _noisy((8, 48, 40), seed=4)
    model = _trained("n2v2", image, "ZYX", steps=2, patch_z=8, batch=2)
    out = model.predict(image, tta=True)
    assert out.shape == image.shape and out.dtype == np.float32 and np.isfinite(out).all()
    assert np.abs(out - model.predict(image)).mean() < 0.05


# ----------------------------------------------------------------------- axes, units, copies


def _unit_data(axes):
    """Data in [0, 1]-ish units with the given axes, and the gain and offset of its raw-unit version."""
    if axes == "YX":
        base, gain, offset = _noisy((64, 64), seed=5), 1000.0, 200.0
    elif axes == "CYX":  # two channels with very different units
        base = np.stack([_noisy((64, 64), seed=6), _noisy((64, 64), seed=7)])
        gain, offset = np.array([1000.0, 0.01])[:, None, None], np.array([200.0, -3.0])[:, None, None]
    elif axes == "TYX":
        base, gain, offset = np.stack([_noisy((64, 64), seed=8 + t) for t in range(3)]), 400.0, 50.0
    else:
        base, gain, offset = _noisy((16, 48, 48), seed=9), 3000.0, 1000.0
    return base.astype(np.float32), gain, offset


@pytest.mark.parametrize("axes", ["YX", "CYX", "TYX", "ZYX"])
def test_outputs_in_input_units_and_shape(axes):
    """A model trained on ``offset + gain * x`` predicts ``offset + gain * (its prediction on x)``: outputs
    come back in the input's units, per channel, whatever the training quality."""
    base, gain, offset = _unit_data(axes)
    raw = (offset + gain * base.astype(np.float64)).astype(np.float32)
    original = raw.copy()
    reference = _trained("n2v2", base, axes, steps=10, patch_z=8).predict(base)
    model = _trained("n2v2", raw, axes, steps=10, patch_z=8)
    out = model.predict(raw)
    out_tta = model.predict(raw, tta=True, tile=32)
    np.testing.assert_array_equal(raw, original)  # never modified, by training or prediction
    for result in (out, out_tta):
        assert result.shape == raw.shape and result.dtype == np.float32
        assert np.isfinite(result).all()
    expected = offset + gain * reference.astype(np.float64)
    spread = gain * np.ptp(base, axis=tuple(range(1, base.ndim)) if axes == "CYX" else None, keepdims=True)
    assert (np.abs(out - expected) <= 1e-3 * spread).all()


def test_input_not_modified_by_predict_outputs_float64(n2v2_model):
    model, image = n2v2_model
    data = image.astype(np.float64)
    original = data.copy()
    outputs = model.predict_outputs(data, tile=64, tta=True)
    np.testing.assert_array_equal(data, original)
    assert outputs["denoised"] is not data


def test_yx_model_predicts_tyx_and_cannot_take_z(n2v2_model):
    from napari_selfdenoise.core.errors import SelfDenoiseError

    model, image = n2v2_model
    stack = np.stack([image, image[::-1]])
    out = model.predict(stack, axes="TYX")
    assert out.shape == stack.shape
    np.testing.assert_allclose(out[0], model.predict(image), atol=1e-5)
    with pytest.raises(SelfDenoiseError, match="2D"):
        model.predict(np.stack([image] * 8), axes="ZYX")


# ------------------------------------------------------------------------------------ dtypes


def _as_dtype(dtype):
    base = _noisy((64, 64), seed=10).astype(np.float64)
    if dtype == np.uint8:
        return np.clip(20 + 200 * base, 0, 255).round().astype(np.uint8)
    if dtype == np.uint16:  # above the int16 range: overflow would show
        return np.clip(30000 + 25000 * base, 0, 65535).round().astype(np.uint16)
    if dtype == np.int16:  # negative values
        return np.clip(-800 + 1500 * base, -32768, 32767).round().astype(np.int16)
    return (5.0 + 2.0 * base).astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.float64],
                         ids=lambda d: np.dtype(d).name)
def test_dtype_round_trip(dtype):
    data = _as_dtype(dtype)
    original = data.copy()
    model = _trained("n2s", data, "YX", steps=40, batch=8, features=16)
    out = model.predict(data)
    np.testing.assert_array_equal(data, original)
    assert data.dtype == dtype
    assert out.dtype == np.float32 and out.shape == data.shape
    raw = data.astype(np.float64)
    spread = float(raw.max() - raw.min())
    assert abs(float(out.mean()) - float(raw.mean())) < 0.05 * spread, (out.mean(), raw.mean())
    assert raw.min() - 0.2 * spread < float(np.median(out)) < raw.max()
