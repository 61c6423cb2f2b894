"""Training data: a train/validation split and seeded random patches with flips and 90-degree rotations.

Patches are read lazily from the (possibly memory-mapped) inputs, so memory grows with the patch
count, not the stack size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import SelfDenoiseError
from .lazy import release_pages
from .normalize import Normalization

# With at least this many samples (S/T frames) validation holds out whole samples; else a spatial slab.
_MIN_SAMPLES_FOR_SAMPLE_SPLIT = 10
_MAX_VAL_PATCHES = 64


@dataclass(frozen=True)
class Region:
    """A box of one input: sample indices and, per spatial axis, a [start, stop) range."""

    source: int
    samples: tuple[int, ...]
    bounds: tuple[tuple[int, int], ...]

    @property
    def voxels(self) -> int:
        return len(self.samples) * int(np.prod([b - a for a, b in self.bounds]))


def split_regions(sources, patch_shape, val_fraction: float):
    """Split the canonical inputs into train and validation regions that do not overlap.

    Many samples: hold out whole samples. Few: hold out a slab at the end of the longest spatial
    axis that can spare one patch. Tiny inputs: validation reuses training data (stated in the notes).
    """
    full = [Region(i, tuple(range(s.shape[0])), tuple((0, n) for n in s.shape[2:])) for i, s in enumerate(sources)]
    if val_fraction <= 0:
        return full, full, "no validation split"
    total = sum(s.shape[0] for s in sources)
    if total >= _MIN_SAMPLES_FOR_SAMPLE_SPLIT:
        return (*_split_samples(full, total, val_fraction), "held out whole samples")
    train, val = [], []
    for region in full:
        pieces = _split_slab(region, patch_shape, val_fraction)
        if pieces is None:
            return full, full, "images too small to hold out a slab: validation overlaps training"
        train.append(pieces[0])
        val.append(pieces[1])
    return train, val, "held out a slab at the end of the longest axis"


def _split_samples(full, total, val_fraction):
    n_val = max(1, round(total * val_fraction))
    flat = [(r.source, s, r.bounds) for r in full for s in r.samples]
    val_set = set(np.linspace(0, total - 1, n_val).round().astype(int).tolist())
    train = [Region(src, (s,), b) for k, (src, s, b) in enumerate(flat) if k not in val_set]
    val = [Region(src, (s,), b) for k, (src, s, b) in enumerate(flat) if k in val_set]
    return train, val


def _split_slab(region, patch_shape, val_fraction):
    sizes = [b for _, b in region.bounds]
    for axis in np.argsort(sizes)[::-1]:
        size, patch = sizes[axis], patch_shape[axis]
        cut = max(patch, int(round(size * val_fraction)))
        if size - cut >= patch:
            train_bounds = list(region.bounds)
            val_bounds = list(region.bounds)
            train_bounds[axis] = (0, size - cut)
            val_bounds[axis] = (size - cut, size)
            return (Region(region.source, region.samples, tuple(train_bounds)),
                    Region(region.source, region.samples, tuple(val_bounds)))
    return None


class PatchSampler:
    """Draws normalised, augmented patches (B, C, [Z,] Y, X) as float32 from regions of the inputs."""

    def __init__(self, sources, regions, patch_shape, normalization: Normalization, seed: int,
                 augment: bool = True):
        self.sources, self.regions = sources, list(regions)
        self.patch_shape = tuple(patch_shape)
        self.normalization = normalization
        self.augment = augment
        self.rng = np.random.default_rng(seed)
        for region in self.regions:
            for (a, b), p in zip(region.bounds, self.patch_shape):
                if b - a < p:
                    raise SelfDenoiseError(
                        f"the image ({'x'.join(str(b - a) for a, b in region.bounds)} pixels) is smaller "
                        f"than the patch ({'x'.join(map(str, self.patch_shape))}); choose a smaller patch"
                    )
        weights = np.array([r.voxels for r in self.regions], dtype=float)
        self.weights = weights / weights.sum()

    def patch(self) -> np.ndarray:
        region = self.regions[self.rng.choice(len(self.regions), p=self.weights)]
        sample = region.samples[self.rng.integers(len(region.samples))]
        index = [sample, slice(None)]
        for (a, b), p in zip(region.bounds, self.patch_shape):
            start = int(self.rng.integers(a, b - p + 1))
            index.append(slice(start, start + p))
        data = np.asarray(self.sources[region.source][tuple(index)])
        patch = self.normalization.apply(data[None])[0]
        return self._augment(patch) if self.augment else patch

    def _augment(self, patch: np.ndarray) -> np.ndarray:
        # YX only: rotations by 90 degrees (patches are square in YX) and flips; Z is never flipped
        # into Y/X because Z is often much coarser.
        patch = np.rot90(patch, k=int(self.rng.integers(4)), axes=(-2, -1))
        if self.rng.integers(2):
            patch = patch[..., ::-1]
        return patch

    def batch(self, size: int) -> np.ndarray:
        patches = np.ascontiguousarray(np.stack([self.patch() for _ in range(size)]), dtype=np.float32)
        for source in self.sources:  # pages mapped around each patch would pile up over a long run
            release_pages(source)
        return patches

    def fixed_set(self, count: int) -> np.ndarray:
        """A reproducible set of patches (validation), without augmentation."""
        augment, self.augment = self.augment, False
        try:
            return self.batch(count)
        finally:
            self.augment = augment


def validation_patch_count(regions, patch_shape) -> int:
    """About one patch per patch-sized area of the validation regions, at least 4, at most 64."""
    area = sum(r.voxels for r in regions)
    return int(np.clip(area // max(1, int(np.prod(patch_shape))), 4, _MAX_VAL_PATCHES))
