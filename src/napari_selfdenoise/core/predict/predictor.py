"""``Predictor``: what a front end may use of a loaded model, whoever made it.

Two classes satisfy it: ``denoiser.Denoiser`` (trained here, loaded from a model file or from one of our
bioimage.io packages) and ``bmz.ForeignModel`` (a bioimage.io model made elsewhere, prediction only).
Front ends (the CLI, the widgets, ``jobs``) check ``trainable`` before they use anything else of
``Denoiser`` (``train``, ``save``, ``export_bmz``, ``prepare_fine_tuning``, ``state``), never the type.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import SelfDenoiseError

Progress = Callable[[int, int], None]


def check_fits(layout, dims: int, in_channels: int | None, out_channels: int | None = None) -> None:
    """The one compatibility check of an image (``axes.Layout``) against a network: 2D or 3D, the
    number of input channels, and a C axis for a network that outputs several channels."""
    if (3 if layout.is_3d else 2) != dims:
        want = "3D (with a Z axis)" if dims == 3 else "2D (without a Z axis)"
        hint = (f"; to denoise the planes one by one, give the axes as {layout.axes.replace('Z', 'T')!r}"
                if layout.is_3d and "T" not in layout.axes else "")
        raise SelfDenoiseError(f"this model is {want}, but the image axes are {layout.axes!r}{hint}")
    if in_channels is not None and layout.channels != in_channels:
        raise SelfDenoiseError(f"this model expects {in_channels} channel(s), the image has {layout.channels}")
    if out_channels is not None and out_channels != 1 and "C" not in layout.axes:
        raise SelfDenoiseError(f"this model outputs {out_channels} channels; give the image a C axis")


@runtime_checkable
class Predictor(Protocol):
    """A model that predicts images. Options (``tile``, ``device``, ``tta``, ``batch_size``,
    ``precision``, ``compiled``) are keywords; a model ignores those that mean nothing to it."""

    @property
    def trainable(self) -> bool:
        """Whether this is a ``Denoiser`` that can go on training (and be saved and exported)."""
        ...

    @property
    def trained(self) -> bool:
        """Whether it has weights to predict with."""
        ...

    @property
    def axes(self) -> str:
        """The axes an image is taken to have when none are given (e.g. "YX", "CZYX")."""
        ...

    @property
    def method_name(self) -> str:
        """A short name of what it applies, for layer and file names: "n2v2", "auto", "bioimage.io"."""
        ...

    @property
    def title(self) -> str:
        """What it is, for people: the method's title, or a foreign package's name."""
        ...

    @property
    def outputs(self) -> tuple[str, ...]:
        """The names of its outputs: ``denoised`` first (N-net also ``noise_std``)."""
        ...

    def check_axes(self, shape, axes: str | None = None) -> None:
        """Raise a one-line ``SelfDenoiseError`` if an image of ``shape`` with ``axes`` does not fit."""
        ...

    def check_layout(self, layout) -> None:
        """The same for an image already seen as canonical (an ``axes.Layout``)."""
        ...

    def predict(self, image, axes: str | None = None, **options) -> np.ndarray:
        """The denoised image: float32, the input's shape and units."""
        ...

    def predict_outputs(self, image, axes: str | None = None, *, progress: Progress | None = None,
                        **options) -> dict[str, np.ndarray]:
        """Every output, each shaped like the input."""
        ...

    def predict_steps(self, image, axes: str | None = None, **options) -> Generator[tuple[int, int], None, dict]:
        """``predict_outputs`` as a step generator (``core.steps``): yields (tiles done, total)."""
        ...

    def predict_to(self, image, out, axes: str | None = None, *, noise_std=None, overwrite: bool = False,
                   scale=None, units=None, progress: Progress | None = None, **options) -> list[Path]:
        """Predict block by block into ``out`` on disk (.ome.zarr/.zarr or .ome.tif), memory bounded."""
        ...

    def predict_to_steps(self, image, targets: dict, axes: str | None = None, *, overwrite: bool = False,
                         scale=None, units=None, **options) -> Generator[tuple[int, int], None, list[Path]]:
        """``predict_to`` as a step generator; ``targets`` is {output name: path}."""
        ...
