"""Checks on user images, done once up front so bad input fails fast with a message that says what to do."""

from __future__ import annotations

import numpy as np

from ..errors import SelfDenoiseError
from .axes import Layout, make_layout
from .lazy import slabs

SUPPORTED_DTYPES = ("uint8", "uint16", "uint32", "int8", "int16", "int32", "float16", "float32", "float64")
MIN_SIZE = 8
# Finite-check big arrays in pieces so a memory-mapped stack is never loaded whole.
_CHECK_CHUNK = 16_000_000


def check_image(array, axes: str, name: str = "image") -> Layout:
    """Validate an input array and its axes; return its ``Layout``."""
    if not hasattr(array, "shape") or not hasattr(array, "dtype"):
        raise SelfDenoiseError(f"{name} must be an array, got {type(array).__name__}")
    layout = check_shape(array.shape, array.dtype, axes, name)
    if np.dtype(array.dtype).kind == "f" and not _all_finite(array):
        raise SelfDenoiseError(f"{name} contains NaN or infinite values; replace them (e.g. by 0) first")
    return layout


def check_shape(shape, dtype, axes: str, name: str = "image") -> Layout:
    """The checks that need no pixel values (axes, data type, size): cheap enough for a GUI to run as
    the user picks a layer."""
    layout = make_layout(tuple(shape), axes)
    dtype = np.dtype(dtype)
    if dtype.name not in SUPPORTED_DTYPES:
        raise SelfDenoiseError(
            f"{name} has data type {dtype.name}, which is not supported; "
            f"convert it to one of {', '.join(SUPPORTED_DTYPES)}"
        )
    small = {a: shape[layout.axes.index(a)] for a in "YX" if shape[layout.axes.index(a)] < MIN_SIZE}
    if small:
        sizes = ", ".join(f"{a}={s}" for a, s in small.items())
        raise SelfDenoiseError(f"{name} is too small ({sizes}); need at least {MIN_SIZE} pixels along Y and X")
    return layout


def _all_finite(array) -> bool:
    return all(np.isfinite(piece).all() for piece in slabs(array, _CHECK_CHUNK))


def check_same_axes_shape(arrays, axes: str) -> list[Layout]:
    """All training inputs share the axes and channel count (sizes may differ)."""
    layouts = [check_image(a, axes, f"image {i + 1}" if len(arrays) > 1 else "image") for i, a in enumerate(arrays)]
    channels = {layout.channels for layout in layouts}
    if len(channels) > 1:
        raise SelfDenoiseError(f"the images have different channel counts {sorted(channels)}; train on one kind")
    return layouts
