"""Axes strings (over S, T, C, Z, Y, X) and the canonical (N, C, [Z,] Y, X) layout the engine works in.

S and T are both samples: they are flattened into N. C goes through the network as channels.
Z makes the model 3D.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import SelfDenoiseError
from .lazy import is_lazy

VALID_AXES = "STCZYX"
SAMPLE_AXES = "ST"


def validate_axes(axes: str, shape: tuple[int, ...] | None = None) -> str:
    """Return the axes string upper-cased, or raise a ``SelfDenoiseError`` saying what is wrong."""
    if not isinstance(axes, str) or not axes:
        raise SelfDenoiseError("axes must be a non-empty string such as 'YX', 'ZYX' or 'TYX'")
    axes = axes.upper()
    bad = sorted(set(axes) - set(VALID_AXES))
    if bad:
        raise SelfDenoiseError(
            f"axes {axes!r} contain {''.join(bad)!r}; use only the letters S, T, C, Z, Y, X"
        )
    if len(set(axes)) != len(axes):
        raise SelfDenoiseError(f"axes {axes!r} repeat a letter; each axis may appear once")
    if "Y" not in axes or "X" not in axes:
        raise SelfDenoiseError(f"axes {axes!r} must include both Y and X")
    if shape is not None and len(shape) != len(axes):
        raise SelfDenoiseError(
            f"axes {axes!r} name {len(axes)} dimensions but the image has {len(shape)} "
            f"(shape {tuple(shape)}); give one letter per dimension"
        )
    return axes


def default_axes(ndim: int) -> str:
    """A guess for data with no metadata: YX, ZYX, then leading samples."""
    guesses = {2: "YX", 3: "ZYX", 4: "TZYX", 5: "TZCYX"}
    if ndim not in guesses:
        raise SelfDenoiseError(f"cannot guess the axes of a {ndim}-dimensional image; give them")
    return guesses[ndim]


@dataclass(frozen=True)
class Layout:
    """How an array with ``axes`` maps to and from the canonical (N, C, [Z,] Y, X) layout."""

    axes: str
    shape: tuple[int, ...]

    @property
    def order(self) -> list[int]:
        """Source-axis indices in canonical order: samples, C, Z, Y, X (missing ones skipped)."""
        samples = [i for i, a in enumerate(self.axes) if a in SAMPLE_AXES]
        rest = [self.axes.index(a) for a in "CZYX" if a in self.axes]
        return samples + rest

    @property
    def is_3d(self) -> bool:
        return "Z" in self.axes

    @property
    def channels(self) -> int:
        return self.shape[self.axes.index("C")] if "C" in self.axes else 1

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[self.axes.index(a)] for a in "ZYX" if a in self.axes)

    @property
    def n_samples(self) -> int:
        return int(np.prod([self.shape[i] for i, a in enumerate(self.axes) if a in SAMPLE_AXES]))

    @property
    def canonical_shape(self) -> tuple[int, ...]:
        return (self.n_samples, self.channels, *self.spatial_shape)

    def to_canonical(self, array):
        """View (or copy, when needed) ``array`` as (N, C, [Z,] Y, X); works for numpy and dask.

        A memory-map is never copied: when the view is impossible (sample axes that are not
        neighbours in memory), it is wrapped as a dask array instead."""
        transposed = array.transpose(self.order)
        if isinstance(transposed, np.ndarray) and is_lazy(array):
            try:
                return transposed.reshape(self.canonical_shape, copy=False)
            except ValueError:
                import dask.array as da

                transposed = da.from_array(transposed, chunks=(1,) * len(self.order[:-2]) + transposed.shape[-2:])
        return transposed.reshape(self.canonical_shape)

    def from_canonical(self, array, channels: int | None = None):
        """Inverse of :meth:`to_canonical`; ``channels`` lets outputs carry another channel count."""
        c = self.channels if channels is None else channels
        sample_dims = [self.shape[i] for i, a in enumerate(self.axes) if a in SAMPLE_AXES]
        transposed = list(sample_dims)
        if "C" in self.axes:
            transposed.append(c)
        elif c != 1:
            raise SelfDenoiseError("a multi-channel output needs a C axis in the input axes")
        transposed += list(self.spatial_shape)
        inverse = np.argsort(self.order)
        return array.reshape(transposed).transpose(inverse)


def make_layout(array_shape: tuple[int, ...], axes: str) -> Layout:
    return Layout(validate_axes(axes, array_shape), tuple(int(s) for s in array_shape))
