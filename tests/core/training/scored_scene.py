"""What the tests of the held-out score, the quality estimate and the race share: a noisy scene with a known
noise level, and the helpers that score a classical filter on it."""

from __future__ import annotations

import numpy as np

from napari_selfdenoise.core.data.normalize import Normalization
from napari_selfdenoise.core.data.synthetic import add_noise, fluorescence_image
from napari_selfdenoise.core.methods.classic import CalibrationResult
from napari_selfdenoise.core.training.scoring import Evaluation, HeldOut, classic_predictor

SIGMA = 0.1


def make_scene() -> tuple[np.ndarray, np.ndarray]:
    """A clean fluorescence-like image and its copy with Gaussian noise of std ``SIGMA``."""
    clean = fluorescence_image((192, 192), seed=3)
    return clean, add_noise(clean, "gaussian", sigma=SIGMA, seed=4)


def held_out(image) -> HeldOut:
    return HeldOut([np.ascontiguousarray(image[None, None], dtype=np.float32)])


def gaussian(sigma: float):
    return classic_predictor(CalibrationResult("gaussian", "sigma", sigma), Normalization("percentile", [0.0], [1.0]))


def true_mse(evaluation: Evaluation, clean) -> float:
    """The true error of the J-invariant predictions that were scored."""
    return float(np.mean((evaluation.predictions[0][0] - clean) ** 2))
