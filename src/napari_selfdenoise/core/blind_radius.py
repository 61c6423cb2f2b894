"""The ``blind_radius`` option, shared by the neural methods and the classic calibration (no torch here).

For noise shared by neighbouring pixels (resampled, demosaiced or binned images), the pixels within
``blind_radius`` of each blind spot are hidden too; the blind-spot grid must then leave visible pixels
between the hidden squares.
"""

from __future__ import annotations

from .errors import SelfDenoiseError

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
