"""The no-ground-truth quality estimate (core/training/quality.py): within its stated uncertainty, and
"not reliable" when it cannot be."""

from __future__ import annotations

import math

from scored_scene import SIGMA, gaussian, held_out, true_mse

from napari_selfdenoise.core.data.synthetic import add_noise
from napari_selfdenoise.core.training.quality import noise_variance_from_data, quality_estimate, shared_noise_of


def test_quality_estimate_within_its_stated_uncertainty(scene):
    clean, noisy = scene
    held = held_out(noisy)
    evaluation = held.evaluate(gaussian(1.0))
    variance, stderr, mse_stderr = noise_variance_from_data(held.crops, errors=evaluation.errors)
    assert abs(variance - SIGMA**2) < 0.05 * SIGMA**2
    estimate = quality_estimate(evaluation, variance, stderr, "data", mse_stderr=mse_stderr)
    assert estimate.reliable, estimate.reason
    truth = 10 * math.log10(estimate.peak**2 / true_mse(evaluation, clean))
    assert estimate.psnr_low <= truth <= estimate.psnr_high, (estimate, truth)
    assert "PSNR" in estimate.text()


def test_quality_estimate_says_when_it_is_not_reliable(scene):
    clean, noisy = scene
    held = held_out(noisy)
    variance, stderr = noise_variance_from_data(held.crops)
    # a predictor as bad as the noise itself: the loss minus the variance is the error, but a variance
    # said to be far larger leaves nothing: not reliable, and no number
    estimate = quality_estimate(held.evaluate(gaussian(1.0)), 10 * variance, stderr, "data")
    assert not estimate.reliable and estimate.psnr is None and "not reliable" in estimate.text()
    shared = add_noise(clean, "shared_gaussian", sigma=SIGMA, seed=5)
    hint = shared_noise_of([shared[None, None]])
    assert hint is not None
    estimate = quality_estimate(held_out(shared).evaluate(gaussian(1.0)), variance, stderr, "data", hint)
    assert not estimate.reliable and "shared" in estimate.reason
