"""Makes the backward-compatibility fixtures in this folder (run once per release that changes the format):

    python tests/data/make_compat.py

Each ``compat-<version>-<method>.sdmodel`` is a tiny network trained a few steps on a seeded synthetic image
(with its optimizer state and kept crop), and ``...-expected.npy`` its prediction on another seeded synthetic
image. ``tests/core/io/test_compat.py`` checks that today's code loads every file here and predicts the same.
Never regenerate an existing file: add new ones next to it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_selfdenoise import __version__
from napari_selfdenoise.core.data.synthetic import add_noise, fluorescence_image
from napari_selfdenoise.core.denoiser import Denoiser

HERE = Path(__file__).parent
TINY = dict(patch=16, batch=2, features=2, depth=1, steps=2, steps_per_epoch=2, seed=0, device="cpu")


def training_image() -> np.ndarray:
    return add_noise(fluorescence_image((32, 32), seed=100), sigma=0.1, seed=101)


def test_image() -> np.ndarray:
    return add_noise(fluorescence_image((24, 40), seed=200), sigma=0.1, seed=201)


def main() -> None:
    for method in ("n2v2", "nnet"):
        options = {"noise_features": 4} if method == "nnet" else {}
        model = Denoiser(method, "YX", method_options=options, **TINY).fit(training_image())
        stem = f"compat-{__version__}-{method}"
        path = model.save(HERE / f"{stem}.sdmodel")
        outputs = model.predict_outputs(test_image())
        np.save(HERE / f"{stem}-expected.npy", np.stack([outputs[k] for k in model.method.outputs]))
        print(path, path.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
