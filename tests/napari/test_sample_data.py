"""The three generated sample data sets, opened through the manifest as napari's File > Open Sample does."""

from __future__ import annotations

import numpy as np
import pytest

SAMPLES = [
    ("noisy_cells_2d", "cells 2D", (512, 512), "YX"),
    ("noisy_cells_3d", "cells 3D", (32, 192, 192), "ZYX"),
    ("noisy_timelapse", "cells time-lapse", (20, 192, 192), "TYX"),
]


@pytest.mark.parametrize(("key", "name", "shape", "axes"), SAMPLES)
def test_open_sample(make_napari_viewer, key, name, shape, axes):
    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-selfdenoise", key)
    assert [layer.name for layer in layers] == [f"{name} (noisy)", f"{name} (clean)"]
    noisy, clean = layers
    assert list(viewer.layers) == [noisy, clean]
    for layer in (noisy, clean):
        assert layer.data.shape == shape
        assert layer.data.dtype == np.float32
        assert layer.axis_labels == tuple(axes)
        assert layer.metadata["axes"] == axes
        assert np.isfinite(layer.data).all()
    assert noisy.visible and not clean.visible
    # really a noisy/clean pair: same scene, different pixels, the clean one smoother
    residual = np.asarray(noisy.data, np.float64) - clean.data
    assert residual.std() > 0.01
    assert np.corrcoef(noisy.data.ravel(), clean.data.ravel())[0, 1] > 0.5
    assert np.abs(np.diff(clean.data, axis=-1)).mean() < np.abs(np.diff(noisy.data, axis=-1)).mean()
