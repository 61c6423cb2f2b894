"""Synthetic fluorescence-like images and noise, for the demo, tests, benchmarks and napari sample data.

Everything is seeded and numpy/scipy only. Images are float32 in [0, 1]:

    clean = fluorescence_image((256, 256), seed=0)           # YX (or ZYX for a 3-tuple)
    noisy = add_noise(clean, "poisson_gaussian", photons=30, sigma=0.03)
    psnr(clean, noisy)
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

NOISE_KINDS = ("gaussian", "poisson_gaussian", "shared_gaussian")
SHARED_NOISE_BLUR = 0.7  # px: neighbour correlation about 0.6, as in resampled or demosaiced images

# Blob size classes: (Gaussian sigma in pixels, count per 256x256 area (x Z/32 in 3D), brightness range).
_BLOBS = ((1.2, 70, (0.3, 0.9)),   # vesicles
          (3.0, 24, (0.25, 0.6)),  # small organelles
          (8.0, 8, (0.4, 0.7)))    # nuclei
_FILAMENTS_PER_AREA = 5
_FILAMENT_SIGMA = 0.9
_REF_AREA = 256 * 256


def _check_shape(shape) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"shape must be 2-D (Y, X) or 3-D (Z, Y, X) with positive sizes, not {shape}")
    return shape


def _scene(shape: tuple[int, ...], rng: np.random.Generator) -> dict:
    """Random blob centres/amplitudes per size class, filament paths and a coarse background grid."""
    scale = shape[-1] * shape[-2] / _REF_AREA * (shape[0] / 32 if len(shape) == 3 else 1.0)
    blobs = []
    for sigma, per_area, (low, high) in _BLOBS:
        n = max(1, int(round(per_area * scale)))  # noqa: RUF046 -- numpy < 2 rounds its floats to floats
        centres = rng.uniform(0, 1, (n, len(shape))) * np.array(shape)
        blobs.append((sigma, centres, rng.uniform(low, high, n)))
    filaments = [_filament(shape, rng)
                 for _ in range(max(1, int(round(_FILAMENTS_PER_AREA * scale))))]  # noqa: RUF046 -- numpy < 2 rounds its floats to floats
    coarse = rng.uniform(0, 1, tuple(max(2, math.ceil(s / 64) + 1) for s in shape))
    return {"blobs": blobs, "filaments": filaments, "background": coarse}


def _filament(shape: tuple[int, ...], rng: np.random.Generator):
    """A smooth, slowly turning path (points every half pixel) with one brightness."""
    length = rng.uniform(0.4, 1.0) * max(shape[-2:])
    steps = int(length / 0.5)
    start = rng.uniform(0, 1, len(shape)) * np.array(shape)
    direction = rng.normal(size=len(shape))
    if len(shape) == 3:
        direction[0] *= 0.2  # mostly in-plane, like filaments in a thin cell
    direction /= np.linalg.norm(direction)
    points = np.empty((steps, len(shape)))
    turn = rng.normal(0, 0.02, len(shape))
    for i in range(steps):  # curvature itself wanders: gentle, curvy lines
        points[i] = start
        turn = 0.97 * turn + rng.normal(0, 0.006, len(shape))
        direction = direction + turn
        direction /= np.linalg.norm(direction)
        start = start + 0.5 * direction
    return points, float(rng.uniform(0.25, 0.5))


def _splat(shape: tuple[int, ...], points: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Linear (bilinear/trilinear) splatting of weighted points onto a grid; points outside are dropped."""
    out = np.zeros(shape, np.float64)
    base = np.floor(points).astype(int)
    frac = points - base
    for corner in np.ndindex(*(2,) * len(shape)):
        idx = base + np.array(corner)
        w = weights * np.prod(np.where(np.array(corner), frac, 1 - frac), axis=1)
        inside = np.all((idx >= 0) & (idx < np.array(shape)), axis=1)
        np.add.at(out, tuple(idx[inside].T), w[inside])
    return out


def _render(shape: tuple[int, ...], scene: dict, shift: np.ndarray | None = None) -> np.ndarray:
    image = np.zeros(shape, np.float64)
    for k, (sigma, centres, amplitudes) in enumerate(scene["blobs"]):
        if shift is not None:
            centres = centres + shift[k]
        # Peak height = amplitude: a unit impulse blurred by a Gaussian peaks at (sqrt(2 pi) sigma)^-d.
        impulses = _splat(shape, centres, amplitudes * (math.sqrt(2 * math.pi) * sigma) ** len(shape))
        image += ndi.gaussian_filter(impulses, sigma, mode="constant", truncate=3.0)
    lines = np.zeros(shape, np.float64)
    for points, brightness in scene["filaments"]:
        # A line with linear density rho blurred by sigma peaks at rho / (sqrt(2 pi) sigma)^(d-1).
        weight = 0.5 * brightness * (math.sqrt(2 * math.pi) * _FILAMENT_SIGMA) ** (len(shape) - 1)
        lines += _splat(shape, points, np.full(len(points), weight))
    image += ndi.gaussian_filter(lines, _FILAMENT_SIGMA, mode="constant", truncate=3.0)
    coarse = scene["background"]
    zoom = [s / c for s, c in zip(shape, coarse.shape)]
    background = ndi.zoom(coarse, zoom, order=3, mode="nearest", grid_mode=True)  # exactly ``shape``
    image += 0.04 + 0.08 * np.clip(background, 0, 1)
    return image


def _to_unit(image: np.ndarray) -> np.ndarray:
    # A few overlapping blobs would otherwise set the scale and leave the rest dim: saturate them.
    peak = float(np.percentile(image, 99.95)) or 1.0
    return np.clip(image / peak, 0, 1).astype(np.float32)


def fluorescence_image(shape=(256, 256), seed: int = 0) -> np.ndarray:
    """A clean fluorescence-like image: Gaussian blobs of several sizes (vesicles to nuclei), thin
    curvy filaments and a smooth background. ``shape`` is (Y, X) or (Z, Y, X); float32 in [0, 1]."""
    shape = _check_shape(shape)
    image = _render(shape, _scene(shape, np.random.default_rng(seed)))
    return _to_unit(image)


def timelapse(frames: int = 8, shape=(128, 128), seed: int = 0, speed: float = 0.5) -> np.ndarray:
    """A (T, Y, X) time-lapse of one scene whose blobs drift slowly (``speed`` pixels per frame,
    random directions); filaments and background stay put. float32 in [0, 1], one scale for all frames."""
    shape = _check_shape(shape)
    if len(shape) != 2:
        raise ValueError("timelapse makes TYX stacks: give a 2-D (Y, X) frame shape")
    if int(frames) < 1:
        raise ValueError("frames must be at least 1")
    rng = np.random.default_rng(seed)
    scene = _scene(shape, rng)
    velocities = []
    for _, centres, _ in scene["blobs"]:
        angle = rng.uniform(0, 2 * math.pi, len(centres))
        unit = np.stack([np.sin(angle), np.cos(angle)], 1)
        velocities.append(speed * rng.uniform(0.5, 1.5, (len(centres), 1)) * unit)
    stack = np.stack([_render(shape, scene, [t * v for v in velocities]) for t in range(int(frames))])
    return _to_unit(stack)


def add_noise(clean, kind: str = "gaussian", sigma: float = 0.1, photons: float = 30, seed: int = 0) -> np.ndarray:
    """Noisy float32 copy of ``clean`` (values around [0, 1]).

    ``gaussian``: additive white noise of std ``sigma``. ``poisson_gaussian``: shot noise with
    ``photons`` expected photons at intensity 1 (rescaled back to the input's units), plus
    Gaussian read noise of std ``sigma``. ``shared_gaussian``: additive noise of std ``sigma`` shared by
    neighbouring pixels (white noise blurred in Y and X by ``SHARED_NOISE_BLUR``), for ``blind_radius``.
    """
    clean = np.asarray(clean, dtype=np.float64)
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        noisy = clean + rng.normal(0, sigma, clean.shape)
    elif kind == "shared_gaussian":
        blur = (0,) * (clean.ndim - 2) + (SHARED_NOISE_BLUR,) * 2
        shared = ndi.gaussian_filter(rng.normal(0, 1, clean.shape), blur)
        noisy = clean + sigma * shared / shared.std()
    elif kind == "poisson_gaussian":
        if photons <= 0:
            raise ValueError("photons must be positive")
        noisy = rng.poisson(np.clip(clean, 0, None) * photons) / photons + rng.normal(0, sigma, clean.shape)
    else:
        raise ValueError(f"unknown noise kind {kind!r}; use one of {', '.join(NOISE_KINDS)}")
    return noisy.astype(np.float32)


def psnr(reference, image, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB; ``data_range`` defaults to the reference's max - min."""
    reference = np.asarray(reference, dtype=np.float64)
    image = np.asarray(image, dtype=np.float64)
    if reference.shape != image.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {image.shape}")
    if data_range is None:
        data_range = float(reference.max() - reference.min()) or 1.0
    mse = float(np.mean((reference - image) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)
