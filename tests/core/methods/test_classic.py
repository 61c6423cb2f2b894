"""The classic method: J-invariance, the self-supervised loss, calibration, layouts, units."""

import functools
import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_selfdenoise.core.data.normalize import Normalization
from napari_selfdenoise.core.errors import SelfDenoiseError
from napari_selfdenoise.core.methods.classic import (
    DEFAULT_DENOISERS,
    CalibrationResult,
    calibrate,
    calibrate_and_denoise,
    denoise_classic,
    invariant_denoise,
    self_supervised_loss,
)

NOISE = 0.1


def smooth_image(shape=(128, 128), seed=0):
    """Smooth blobs in [0, 1]: a Gaussian-filtered random field."""
    field = ndi.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), 3)
    return ((field - field.min()) / (field.max() - field.min())).astype(np.float32)


def add_noise(clean, seed=1):
    return (clean + np.random.default_rng(seed).normal(0, NOISE, clean.shape)).astype(np.float32)


def psnr(image, clean):
    return 10 * np.log10(1.0 / np.mean((image.astype(np.float64) - clean) ** 2))


def test_calibrate_and_denoise_beats_noisy_by_3_db():
    clean = smooth_image()
    noisy = add_noise(clean)
    calls = []
    out, result = calibrate_and_denoise(noisy, "YX", progress=lambda d, t: calls.append((d, t)))

    assert psnr(out, clean) >= psnr(noisy, clean) + 3
    # The winner is the lowest point over all the loss curves.
    best = min(loss for curve in result.losses.values() for _, loss in curve)
    assert (result.parameter, best) in result.losses[result.denoiser]
    assert set(result.losses) == set(DEFAULT_DENOISERS)
    # One progress call per (denoiser, parameter), counting up to the total.
    total = sum(len(curve) for curve in result.losses.values())
    assert calls == [(i, total) for i in range(1, total + 1)]
    # JSON-able and round-trips.
    assert CalibrationResult.from_dict(json.loads(json.dumps(result.to_dict()))) == result


def test_gaussian_loss_curve_has_an_interior_minimum_and_tracks_the_true_error():
    clean = smooth_image()
    noisy = add_noise(clean)
    result = calibrate(noisy, "YX", denoisers=("gaussian",))
    curve = result.losses["gaussian"]
    sigmas, losses = zip(*curve)
    assert len(curve) >= 4 and 0 < int(np.argmin(losses)) < len(curve) - 1
    assert result.parameter == sigmas[int(np.argmin(losses))]

    # On raw units: loss = true error of the J-invariant version + noise variance (Noise2Self).
    noise_var = np.mean((noisy - clean) ** 2)
    for sigma in (0.5, 1.5, 4.0):
        fn = functools.partial(ndi.gaussian_filter, sigma=sigma)
        true_error = np.mean((invariant_denoise(noisy, fn) - clean) ** 2)
        assert self_supervised_loss(noisy, fn) == pytest.approx(true_error + noise_var, rel=0.05)


@pytest.mark.parametrize(
    "shape, pixels",
    [((32, 32), [(9, 13), (0, 31), (31, 0)]), ((8, 16, 16), [(2, 5, 7), (7, 0, 15)])],
)
def test_invariant_output_at_a_pixel_ignores_that_pixel(shape, pixels):
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    blur = functools.partial(ndi.gaussian_filter, sigma=1.0)  # sees the centre: not J-invariant
    before = invariant_denoise(x, blur)
    for p in pixels:
        changed = x.copy()
        changed[p] += 5.0
        after = invariant_denoise(changed, blur)
        assert after[p] == before[p]
        assert blur(changed)[p] != blur(x)[p]  # the plain denoiser does see it
        assert not np.array_equal(after, before)  # ...and so do the pixel's neighbours


def test_donut_median_and_invariant_output_are_j_invariant():
    x = add_noise(smooth_image((48, 48)))
    norm = Normalization.fit(x[None, None])  # fixed, so changing a pixel cannot rescale
    p = (20, 21)
    changed = x.copy()
    changed[p] += 3.0
    for denoiser, parameter, invariant in [("donut_median", 2, False), ("tv", 0.1, True)]:
        a, b = (
            denoise_classic(im, "YX", denoiser, parameter, normalization=norm, invariant=invariant)
            for im in (x, changed)
        )
        assert a[p] == pytest.approx(b[p], abs=1e-5)
    plain = [denoise_classic(im, "YX", "median", 1, normalization=norm)[p] for im in (x, changed)]
    assert plain[0] != pytest.approx(plain[1], abs=1e-5)


@pytest.mark.parametrize(
    "axes, shape", [("ZYX", (6, 24, 24)), ("TYX", (3, 24, 24)), ("SCYX", (2, 2, 16, 16))]
)
def test_layouts_give_input_shape_and_float32(axes, shape):
    x = add_noise(smooth_image(shape))
    out, result = calibrate_and_denoise(x, axes)
    assert out.shape == shape and out.dtype == np.float32 and np.isfinite(out).all()
    assert result.denoiser in result.losses


def test_samples_are_denoised_one_by_one_in_2d():
    x = add_noise(smooth_image((3, 32, 32)))
    norm = Normalization.fit(x[:, None])
    stack = denoise_classic(x, "TYX", "gaussian", 2.0, normalization=norm)
    frame = denoise_classic(x[1], "YX", "gaussian", 2.0, normalization=norm)
    np.testing.assert_allclose(stack[1], frame, atol=1e-5)
    volume = denoise_classic(x, "ZYX", "gaussian", 2.0, normalization=norm)
    assert not np.allclose(volume[1], frame, atol=1e-3)  # Z is smoothed across, T is not


def test_input_is_not_modified():
    x = add_noise(smooth_image((40, 40)))
    original = x.copy()
    calibrate_and_denoise(x, "YX", invariant=True)
    np.testing.assert_array_equal(x, original)


def test_uint16_comes_back_in_input_units():
    clean = 1000 + 2000 * smooth_image().astype(np.float64)
    noisy = np.clip(clean + np.random.default_rng(2).normal(0, 200, clean.shape), 0, None)
    noisy = noisy.astype(np.uint16)
    out, _ = calibrate_and_denoise(noisy, "YX")
    assert out.dtype == np.float32
    assert abs(out.mean() - noisy.mean()) < 0.01 * noisy.mean()
    assert np.mean((out - clean) ** 2) < 0.5 * np.mean((noisy - clean) ** 2)


def test_bad_input_raises_a_user_error():
    x = add_noise(smooth_image((32, 32)))
    with pytest.raises(SelfDenoiseError, match="bilateral"):
        calibrate(x, "YX", denoisers=("median", "bilateral"))
    with pytest.raises(SelfDenoiseError, match="unknown"):
        denoise_classic(x, "YX", "bm3d", 1.0)
    bad = x.copy()
    bad[3, 4] = np.nan
    with pytest.raises(SelfDenoiseError, match="NaN"):
        calibrate(bad, "YX")
    with pytest.raises(SelfDenoiseError, match="smaller than 8"):
        calibrate(np.zeros((7, 32), np.float32), "YX")
    with pytest.raises(SelfDenoiseError, match="along X"):
        denoise_classic(np.zeros((3, 32, 7), np.float32), "ZYX", "median", 1)
    with pytest.raises(SelfDenoiseError, match="positive"):
        denoise_classic(x, "YX", "gaussian", 0)
    with pytest.raises(SelfDenoiseError, match="grid"):
        calibrate(x, "YX", grid=1)
    with pytest.raises(SelfDenoiseError, match="axes"):
        calibrate(x, "ZYX")


@pytest.mark.parametrize("radius", [1, 2])
@pytest.mark.parametrize("shape, pixels", [((40, 40), [(17, 13), (0, 39)]), ((5, 24, 24), [(2, 11, 7)])])
def test_blind_radius_output_ignores_the_square_around_the_pixel(shape, pixels, radius):
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    blur = functools.partial(ndi.gaussian_filter, sigma=1.0)
    before = invariant_denoise(x, blur, blind_radius=radius)
    for p in pixels:
        *z, y, xx = p
        for dy, dx in ((0, 0), (radius, 0), (-radius, radius), (0, -radius)):
            q = (*z, min(max(y + dy, 0), shape[-2] - 1), min(max(xx + dx, 0), shape[-1] - 1))
            changed = x.copy()
            changed[q] += 5.0
            assert invariant_denoise(changed, blur, blind_radius=radius)[p] == before[p], (p, q)
        changed = x.copy()
        changed[(*z, min(y + radius + 1, shape[-2] - 1) if y + radius + 1 < shape[-2] else y - radius - 1, xx)] += 5.0
        assert invariant_denoise(changed, blur, blind_radius=radius)[p] != before[p]  # just outside: seen


def test_blind_radius_keeps_the_loss_honest_on_noise_shared_by_neighbours():
    """Noise blurred over about a pixel (as resampling makes it). Noise2Self's guarantee, loss = true error
    of the J-invariant version + noise variance, fails with the plain loss (the neighbours give the noise
    away) and holds again with blind_radius=2."""
    clean = smooth_image((160, 160), seed=2)
    white = np.random.default_rng(3).normal(0, 1, clean.shape)
    shared = ndi.gaussian_filter(white, 0.6)  # neighbour correlation 0.5, 0.06 at 2 pixels
    noisy = (clean + 0.1 * shared / shared.std()).astype(np.float32)
    noise_var = np.mean((noisy - clean) ** 2)
    for sigma in (0.5, 1.5, 3.0):
        fn = functools.partial(ndi.gaussian_filter, sigma=sigma)
        gaps = {}
        for radius in (0, 2):
            true_error = np.mean((invariant_denoise(noisy, fn, blind_radius=radius) - clean) ** 2)
            gaps[radius] = self_supervised_loss(noisy, fn, blind_radius=radius) / (true_error + noise_var) - 1
        assert gaps[0] < -0.05, f"sigma {sigma}: the plain loss should be fooled ({gaps})"
        assert abs(gaps[2]) < 0.03, f"sigma {sigma}: with blind_radius=2 the loss is off by {gaps[2]:.1%}"


def test_blind_radius_must_be_a_small_whole_number():
    for bad in (-1, 0.5, 7, True):
        with pytest.raises(SelfDenoiseError, match="blind_radius"):
            calibrate(add_noise(smooth_image((32, 32))), "YX", denoisers=("gaussian",), blind_radius=bad)
