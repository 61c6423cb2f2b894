"""napari sample data, generated on the fly (no download, no licence questions)."""

from __future__ import annotations


def _pair(clean, noisy, name: str, axes: str):
    meta = {"metadata": {"axes": axes}, "axis_labels": tuple(axes)}
    return [
        (noisy, {"name": f"{name} (noisy)", **meta}, "image"),
        (clean, {"name": f"{name} (clean)", "visible": False, **meta}, "image"),
    ]


def noisy_cells_2d():
    from .core.data.synthetic import add_noise, fluorescence_image

    clean = fluorescence_image((512, 512), seed=1)
    return _pair(clean, add_noise(clean, "poisson_gaussian", seed=1), "cells 2D", "YX")


def noisy_cells_3d():
    from .core.data.synthetic import add_noise, fluorescence_image

    clean = fluorescence_image((32, 192, 192), seed=2)
    return _pair(clean, add_noise(clean, "poisson_gaussian", seed=2), "cells 3D", "ZYX")


def noisy_timelapse():
    from .core.data.synthetic import add_noise, timelapse

    clean = timelapse(20, (192, 192), seed=3)
    return _pair(clean, add_noise(clean, "poisson_gaussian", seed=3), "cells time-lapse", "TYX")
