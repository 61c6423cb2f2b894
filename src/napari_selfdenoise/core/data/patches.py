"""Training data: a train/validation split and seeded random patches with flips and 90-degree rotations.

Patches are read lazily from the (possibly memory-mapped) inputs, so memory grows with the patch
count, not the stack size. ``Prefetcher`` makes the next batches in a background thread while a step runs.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
from dataclasses import dataclass

import numpy as np

from ..errors import SelfDenoiseError
from .lazy import release_pages, to_numpy
from .normalize import Normalization, per_channel

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
        cut = max(patch, int(round(size * val_fraction)))  # noqa: RUF046 -- numpy < 2 rounds its floats to floats
        if size - cut >= patch:
            train_bounds = list(region.bounds)
            val_bounds = list(region.bounds)
            train_bounds[axis] = (0, size - cut)
            val_bounds[axis] = (size - cut, size)
            return (Region(region.source, region.samples, tuple(train_bounds)),
                    Region(region.source, region.samples, tuple(val_bounds)))
    return None


class PatchSampler:
    """Draws normalised, augmented patches (B, C, [Z,] Y, X) as float32 from regions of the inputs.

    A batch is drawn at once: all its random numbers in one go (so a seed gives the same batches whatever
    the inputs are stored in), then numpy arrays (memory-maps too) are gathered with one fancy index per
    augmentation into a sliding-window view, with no per-patch Python; other lazy arrays (dask, zarr) are
    read patch by patch and augmented the same way.
    """

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
        # Per region, as arrays for vectorised draws: its source, its samples (flattened, with offsets),
        # and the [low, high) range of patch starts on each spatial axis.
        self._region_source = np.array([r.source for r in self.regions])
        self._sample_counts = np.array([len(r.samples) for r in self.regions])
        self._sample_offsets = np.concatenate([[0], np.cumsum(self._sample_counts)[:-1]])
        self._samples = np.concatenate([np.asarray(r.samples, dtype=np.int64) for r in self.regions])
        self._start_low = np.array([[a for a, _ in r.bounds] for r in self.regions])
        self._start_high = np.array([[b - p + 1 for (_, b), p in zip(r.bounds, self.patch_shape)]
                                     for r in self.regions])
        spatial = tuple(range(2, 2 + len(self.patch_shape)))
        self._windows = [np.lib.stride_tricks.sliding_window_view(s, self.patch_shape, axis=spatial)
                         if isinstance(s, np.ndarray) else None for s in sources]
        self._scale = per_channel(normalization.scale, 2 + len(self.patch_shape))
        self._offset = per_channel(normalization.offset, 2 + len(self.patch_shape))

    def patch(self) -> np.ndarray:
        return self.batch(1)[0]

    def batch(self, size: int) -> np.ndarray:
        sources, samples, starts, transforms = self._draw(size)
        out = np.empty((size, self.sources[0].shape[1], *self.patch_shape), dtype=np.float32)
        # Patches are laid out by source, then by augmentation, so that each group is one slice of ``out``
        # filled by one fancy index into a (rotated, flipped) view of the sliding windows.
        order = np.lexsort((transforms, sources))
        sources, samples, starts, transforms = sources[order], samples[order], starts[order], transforms[order]
        for source, first, stop in _runs(sources):
            windows = self._windows[source]
            if windows is None:  # dask, zarr: read each patch, then gather from those as from windows
                windows = self._read_patches(self.sources[source], samples[first:stop], starts[first:stop])
                samples[first:stop], starts[first:stop] = np.arange(stop - first), 0
            for code, lo, hi in _runs(transforms, first, stop):
                out[lo:hi] = _augmented(windows, int(code))[(samples[lo:hi], slice(None), *starts[lo:hi].T)]
        for source in self.sources:  # pages mapped around each patch would pile up over a long run
            release_pages(source)
        # Normalise in place (the same arithmetic as Normalization.apply, without its temporaries).
        np.subtract(out, self._offset, out=out)
        np.divide(out, self._scale, out=out)
        return out

    def _draw(self, size: int):
        """Every random number of a batch, in a fixed order: region (by voxels), sample, start per axis,
        augmentation."""
        rng = self.rng
        regions = rng.choice(len(self.regions), size=size, p=self.weights)
        picks = rng.integers(0, self._sample_counts[regions])
        samples = self._samples[self._sample_offsets[regions] + picks]
        starts = rng.integers(self._start_low[regions], self._start_high[regions])
        # Augmentation code 2 * k + flip: rot90 by k in YX, then a flip of X (Z is never flipped into Y/X:
        # it is often much coarser; patches are square in YX).
        transforms = rng.integers(0, 8, size=size) if self.augment else np.zeros(size, dtype=np.int64)
        return self._region_source[regions], samples, starts, transforms

    def _read_patches(self, source, samples, starts) -> np.ndarray:
        """(n, C, 1.., *patch): patches read one by one, shaped like a sliding-window view's items."""
        dims = len(self.patch_shape)
        patches = [to_numpy(source[(int(sample), slice(None),
                                    *(slice(a, a + p) for a, p in zip(start, self.patch_shape)))])
                   for sample, start in zip(samples, starts)]
        stacked = np.stack(patches)
        return stacked.reshape(stacked.shape[:2] + (1,) * dims + self.patch_shape)

    def fixed_set(self, count: int) -> np.ndarray:
        """A reproducible set of patches (validation), without augmentation."""
        augment, self.augment = self.augment, False
        try:
            return self.batch(count)
        finally:
            self.augment = augment


def _runs(values: np.ndarray, first: int = 0, stop: int | None = None):
    """(value, start, stop) of each run of equal values in ``values[first:stop]`` (sorted there)."""
    stop = len(values) if stop is None else stop
    edges = np.flatnonzero(np.diff(values[first:stop])) + first + 1
    bounds = [first, *edges.tolist(), stop]
    return [(values[a], a, b) for a, b in itertools.pairwise(bounds) if b > a]


def _augmented(windows: np.ndarray, code: int) -> np.ndarray:
    """A view of sliding windows with each window rotated by 90 degrees ``code // 2`` times in YX, then
    flipped in X if ``code`` is odd."""
    view = np.rot90(windows, k=code // 2, axes=(-2, -1))
    return view[..., ::-1] if code % 2 else view


class Prefetcher:
    """Calls ``make()`` over and over in a background thread, keeping up to ``depth`` results ready, so the
    consumer never waits while one is made. ``get()`` returns them in order and re-raises the producer's
    error; ``close()`` stops and joins the thread (also after an error, or with results left unread)."""

    THREAD_NAME = "selfdenoise-prefetch"

    def __init__(self, make, depth: int = 3):
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._closed = threading.Event()
        self._failed = False
        self._thread = threading.Thread(target=self._produce, args=(make,), name=self.THREAD_NAME, daemon=True)
        self._thread.start()

    def _produce(self, make):
        try:
            while not self._closed.is_set():
                self._put((make(), None))
        except BaseException as err:  # noqa: BLE001 -- handed to the consumer, which re-raises it
            self._put((None, err))

    def _put(self, item):
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def get(self):
        if self._failed:
            raise RuntimeError("the prefetch thread has failed")
        item, error = self._queue.get()
        if error is not None:
            self._failed = True
            raise error
        return item

    def close(self):
        self._closed.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):  # unblock a producer waiting to put
                self._queue.get_nowait()
            self._thread.join(timeout=0.05)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def validation_patch_count(regions, patch_shape) -> int:
    """About one patch per patch-sized area of the validation regions, at least 4, at most 64."""
    area = sum(r.voxels for r in regions)
    return int(np.clip(area // max(1, int(np.prod(patch_shape))), 4, _MAX_VAL_PATCHES))


SAMPLE_EDGE = {2: (128, 128), 3: (16, 64, 64)}


def sample_crop(canonical, depth: int) -> np.ndarray:
    """A centred crop of the first sample, all channels, at most 128x128 (2D) or 16x64x64 (3D) pixels,
    each edge a multiple of 2**depth (what the network takes), float32 in raw units."""
    spatial = canonical.shape[2:]
    multiple = 2**depth
    edges = [max(multiple, min(limit, size) // multiple * multiple)
             for limit, size in zip(SAMPLE_EDGE[len(spatial)], spatial)]
    if any(edge > size for edge, size in zip(edges, spatial)):
        return None  # smaller than the network's grid: no sample (an export then asks for an image)
    box = tuple(slice((size - edge) // 2, (size - edge) // 2 + edge) for size, edge in zip(spatial, edges))
    return np.ascontiguousarray(np.asarray(canonical[(slice(0, 1), slice(None), *box)]), dtype=np.float32)
