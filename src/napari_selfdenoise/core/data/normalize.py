"""Per-channel intensity normalisation, fitted on the training data and stored with the model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .lazy import release_pages, to_numpy

# Statistics are estimated on at most this many values per channel, so huge stacks stay cheap.
_MAX_VALUES = 4_000_000
_BOXES = 64  # random boxes read from samples too big to read whole


@dataclass
class Normalization:
    """``normalised = (raw - offset) / scale``, one offset and scale per channel."""

    mode: str
    offset: list[float]
    scale: list[float]

    @classmethod
    def fit(cls, canonical, mode: str = "percentile", percentiles=(0.5, 99.5), seed: int = 0):
        """Fit on a canonical (N, C, ...) array (numpy, memory-map or dask)."""
        offsets, scales = [], []
        for c in range(canonical.shape[1]):
            values = _subsample(canonical, c, seed)
            if mode == "percentile":
                low, high = np.percentile(values, percentiles)
                offset, scale = low, high - low
            else:
                offset, scale = values.mean(), values.std()
            if not np.isfinite(scale) or scale <= 0:
                scale = float(np.abs(values).max()) or 1.0  # flat image: keep units sane
            offsets.append(float(offset))
            scales.append(float(scale))
        return cls(mode, offsets, scales)

    def apply(self, canonical: np.ndarray) -> np.ndarray:
        x = np.asarray(canonical, dtype=np.float32)
        return (x - per_channel(self.offset, x.ndim)) / per_channel(self.scale, x.ndim)

    def invert(self, normalised: np.ndarray) -> np.ndarray:
        x = np.asarray(normalised, dtype=np.float32)
        return x * per_channel(self.scale, x.ndim) + per_channel(self.offset, x.ndim)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "offset": self.offset, "scale": self.scale}

    @classmethod
    def from_dict(cls, data: dict) -> Normalization:
        return cls(str(data["mode"]), [float(v) for v in data["offset"]], [float(v) for v in data["scale"]])


def _subsample(canonical, channel: int, seed: int) -> np.ndarray:
    """Up to ``_MAX_VALUES`` values of one channel: whole samples at random when they are small, else
    random boxes, so a stack is never read whole (a 4 GB volume is one sample)."""
    n = canonical.shape[0]
    per_sample = int(np.prod(canonical.shape[2:]))
    rng = np.random.default_rng(seed)
    if per_sample > _MAX_VALUES:
        values = np.concatenate([to_numpy(canonical[(i, channel, *box)]).ravel()
                                 for i, box in _random_boxes(canonical.shape, rng)])
        release_pages(canonical)
        return values.astype(np.float64)
    take = max(1, min(n, _MAX_VALUES // max(per_sample, 1)))
    picks = np.sort(rng.choice(n, size=take, replace=False))
    values = np.concatenate([to_numpy(canonical[i, channel]).ravel() for i in picks])
    release_pages(canonical)
    if values.size > _MAX_VALUES:
        values = values[:: values.size // _MAX_VALUES + 1]
    return values.astype(np.float64)


def _random_boxes(shape, rng, count: int = _BOXES):
    """``count`` (sample, box) pairs, each box about ``_MAX_VALUES / count`` voxels, cube-like."""
    spatial = shape[2:]
    edge = (_MAX_VALUES / count) ** (1 / len(spatial))
    sizes = [max(1, min(s, int(edge))) for s in spatial]
    for k in range(len(sizes)):  # a thin axis gives its unused share to the others
        rest = int(np.prod(sizes[:k] + sizes[k + 1 :]))
        sizes[k] = max(1, min(spatial[k], _MAX_VALUES // count // max(rest, 1)))
    for _ in range(count):
        i = int(rng.integers(shape[0]))
        starts = [int(rng.integers(0, s - b + 1)) for s, b in zip(spatial, sizes)]
        yield i, tuple(slice(a, a + b) for a, b in zip(starts, sizes))


def per_channel(values, ndim: int) -> np.ndarray:
    """One value per channel, shaped to broadcast over canonical arrays (N, C, ...) of ``ndim`` axes."""
    return np.asarray(values, dtype=np.float32).reshape((1, -1) + (1,) * (ndim - 2))
