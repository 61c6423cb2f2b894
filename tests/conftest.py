"""Shared fixtures: a seeded synthetic fluorescence image, its noisy version and a PSNR helper."""

from __future__ import annotations

import numpy as np
import pytest

from napari_selfdenoise.core.data.synthetic import add_noise, fluorescence_image
from napari_selfdenoise.core.data.synthetic import psnr as _psnr

NOISE_SIGMA = 0.15


def pytest_configure(config):
    # The test tensors are tiny and the machines are often shared: with one thread torch never spin-waits
    # for a descheduled OpenMP worker, which made the suite several times slower under load.
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def _pair() -> tuple[np.ndarray, np.ndarray]:
    clean = fluorescence_image((128, 128), seed=0)
    return clean, add_noise(clean, "gaussian", sigma=NOISE_SIGMA, seed=1)


@pytest.fixture
def clean(_pair) -> np.ndarray:
    """A smooth-blob 'fluorescence' image, float32 in [0, 1], 128x128 (a fresh copy per test)."""
    return _pair[0].copy()


@pytest.fixture
def noisy(_pair) -> np.ndarray:
    """``clean`` plus white Gaussian noise of std 0.15 (a fresh copy per test)."""
    return _pair[1].copy()


@pytest.fixture(scope="session")
def psnr():
    """``psnr(reference, image)`` in dB, with the reference's range as the peak."""
    return _psnr
