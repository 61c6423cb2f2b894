"""The ``blind_radius`` option, shared by the neural methods and the classic calibration (no torch here).

For noise shared by neighbouring pixels (resampled, demosaiced or binned images), the pixels within
``blind_radius`` of each blind spot are hidden too; the blind-spot grid must then leave visible pixels
between the hidden squares. ``shared_noise_hint`` tells from the image itself when the option is needed.
"""

from __future__ import annotations

import numpy as np

from ..errors import SelfDenoiseError

MAX_BLIND_RADIUS = 4


def check_blind_radius(radius) -> int:
    """``radius`` as an int, or a ``SelfDenoiseError`` that says what is allowed."""
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or radius != int(radius) \
            or not 0 <= radius <= MAX_BLIND_RADIUS:
        raise SelfDenoiseError(
            f"option blind_radius must be a whole number of pixels from 0 to {MAX_BLIND_RADIUS} "
            f"(got {radius!r}); 1 or 2 for noise correlated between neighbouring pixels")
    return int(radius)


def grid_spacing(spacing: int, radius: int) -> int:
    """A blind-spot grid ``spacing`` widened so that the hidden squares of ``radius`` leave pixels between
    them (their replacement is the mean of those visible pixels)."""
    return max(int(spacing), 2 * radius + 2)


# Independent noise gives a ratio near 1 (0.84-1.0 measured on textured natural images and fluorescence
# with white noise: fine structure lowers it a little); noise shared by neighbours lowers it to about
# sqrt((1 - rho1) / (1 - rho2)), rho_k its correlation at k pixels (wide-field FMD, rho1 ~ 0.6: 0.68-0.70).
SHARED_NOISE_RATIO = 0.75
_CROP = 512  # pixels per Y-X side looked at: enough for a stable mean, quick on any image
_MIN_DIFFERENCES = 2000


def neighbour_difference_ratio(plane) -> float | None:
    """How much closer neighbouring pixels are than pixels two apart, along Y and X (the smaller ratio):
    mean |x[i+1] - x[i]| / mean |x[i+2] - x[i]|.

    Triples that touch the darkest percent (clipped background, whose zeros look alike) are left out,
    and so is the largest tenth of each kind of difference (edges of structures). None when too few
    pixels are left or the plane is flat.
    """
    plane = np.asarray(plane, dtype=np.float64)
    floor = np.percentile(plane, 1)
    ratios = []
    for axis in (0, 1):
        n = plane.shape[axis]
        a, b, c = (np.take(plane, range(k, n - 2 + k), axis=axis) for k in range(3))
        keep = (a > floor) & (b > floor) & (c > floor)
        if keep.sum() < _MIN_DIFFERENCES:
            continue
        near, far = np.abs(b - a)[keep], np.abs(c - a)[keep]
        near, far = near[near <= np.percentile(near, 90)], far[far <= np.percentile(far, 90)]
        if far.mean() > 0:
            ratios.append(float(near.mean() / far.mean()))
    return min(ratios) if ratios else None


def representative_planes(image, axes: str, channels: int = 4):
    """Y-X planes to look at: the first sample/time point, the middle Z plane, up to ``channels``
    channels, each cropped to its central ``_CROP`` pixels (lazy arrays read only that)."""
    axes = axes.upper()
    shape = dict(zip(axes, image.shape))
    crop = {a: slice(max(0, (shape[a] - _CROP) // 2), max(0, (shape[a] - _CROP) // 2) + _CROP) for a in "YX"}
    for channel in range(min(shape.get("C", 1), channels)):
        index = {**crop, "Z": shape.get("Z", 1) // 2, "C": channel}
        yield np.asarray(image[tuple(index.get(a, 0) for a in axes)])


def shared_noise_ratio(image, axes: str) -> float | None:
    """The smallest neighbour-difference ratio of the image's representative planes, when it is below
    ``SHARED_NOISE_RATIO`` (the noise looks shared by neighbouring pixels); else None."""
    ratios = [r for r in (neighbour_difference_ratio(p) for p in representative_planes(image, axes)) if r is not None]
    return min(ratios) if ratios and min(ratios) < SHARED_NOISE_RATIO else None


def shared_noise_hint(image, axes: str) -> str | None:
    """A sentence suggesting ``blind_radius`` when the noise looks shared by neighbouring pixels, else None
    (front ends add where the option is set)."""
    ratio = shared_noise_ratio(image, axes)
    if ratio is None:
        return None
    return (f"the noise looks shared by neighbouring pixels (neighbour-difference ratio {ratio:.2f}; "
            f"independent noise gives about 0.85-1): the self-supervised loss would take it for signal and "
            f"keep it. Try a blind radius of 2")
