"""The vectorised PatchSampler (crops, augmentation, seeds, lazy inputs) and the Prefetcher thread."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from napari_selfdenoise.core.data.normalize import Normalization
from napari_selfdenoise.core.data.patches import PatchSampler, Prefetcher, split_regions

IDENTITY = Normalization("meanstd", [0.0], [1.0])


def _numbered(shape):
    """Every pixel holds its own index: a patch tells exactly where it came from."""
    return np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)


def _dihedral(patch):
    """The 8 rotations/flips of a patch in its last two axes."""
    rotations = [np.rot90(patch, k, axes=(-2, -1)) for k in range(4)]
    return rotations + [r[..., ::-1] for r in rotations]


def _locate(source, patch, size):
    """(sample, start...) and which of the 8 transforms ``patch`` is of a crop of ``source``."""
    corner = np.unravel_index(int(np.min(patch)), source.shape)
    sample, spatial = corner[0], corner[2:]
    crop = source[(sample, slice(None), *(slice(a, a + p) for a, p in zip(spatial, size)))]
    matches = [k for k, t in enumerate(_dihedral(crop)) if t.shape == patch.shape and np.array_equal(t, patch)]
    return sample, spatial, matches


@pytest.mark.parametrize("shape,patch", [((3, 2, 40, 48), (16, 16)), ((2, 1, 12, 32, 32), (4, 16, 16))])
def test_patches_are_augmented_crops_of_the_training_region(shape, patch):
    source = _numbered(shape)
    train, _, _ = split_regions([source], patch, 0.0)
    norm = Normalization("meanstd", [0.0] * shape[1], [1.0] * shape[1])
    batch = PatchSampler([source], train, patch, norm, seed=0).batch(200)
    assert batch.shape == (200, shape[1], *patch) and batch.dtype == np.float32 and batch.flags.c_contiguous
    seen = set()
    for item in batch:
        _, start, matches = _locate(source, item, patch)
        assert matches, "not a rotated/flipped crop"
        assert all(0 <= a <= n - p for a, n, p in zip(start, shape[2:], patch))
        seen.update(matches)
        if len(patch) == 3:  # Z is never flipped or rotated into Y/X: planes stay in order
            assert np.all(np.diff(item[0, :, 0, 0]) != 0)
    assert seen == set(range(8)), seen  # every rotation and flip occurs


def test_normalisation_is_applied():
    source = np.random.default_rng(0).random((2, 2, 32, 32)).astype(np.float32) * 100
    train, _, _ = split_regions([source], (16, 16), 0.0)
    norm = Normalization("meanstd", [10.0, 50.0], [2.0, 4.0])
    raw = PatchSampler([source], train, (16, 16), IDENTITY.__class__("meanstd", [0.0, 0.0], [1.0, 1.0]), seed=3,
                       augment=False).batch(8)
    normed = PatchSampler([source], train, (16, 16), norm, seed=3, augment=False).batch(8)
    np.testing.assert_array_equal(normed, norm.apply(raw))


def test_same_seed_same_batches_whatever_the_storage(tmp_path):
    """numpy, a memory-map and a dask array give the same batches for a seed (dask is read patch by patch)."""
    da = pytest.importorskip("dask.array")
    data = np.random.default_rng(1).random((4, 1, 48, 40)).astype(np.float32)
    mapped = np.lib.format.open_memmap(tmp_path / "a.npy", mode="w+", dtype=np.float32, shape=data.shape)
    mapped[:] = data
    mapped.flush()
    mapped = np.load(tmp_path / "a.npy", mmap_mode="r")
    chunked = da.from_array(data, chunks=(1, 1, 16, 16))
    batches = []
    for source in (data, mapped, chunked):
        train, _, _ = split_regions([source], (16, 16), 0.0)
        sampler = PatchSampler([source], train, (16, 16), IDENTITY, seed=5)
        batches.append([sampler.batch(32) for _ in range(3)])
    for other in batches[1:]:
        for a, b in zip(batches[0], other):
            np.testing.assert_array_equal(a, b)
    assert not np.array_equal(batches[0][0], batches[0][1])  # the stream moves on
    train, _, _ = split_regions([data], (16, 16), 0.0)
    assert not np.array_equal(PatchSampler([data], train, (16, 16), IDENTITY, seed=6).batch(32), batches[0][0])


def test_several_sources_and_regions_are_drawn_by_size():
    sources = [np.full((1, 1, 32, 32), 1.0, np.float32), np.full((3, 1, 64, 64), 2.0, np.float32)]
    train, _, _ = split_regions(sources, (16, 16), 0.0)
    batch = PatchSampler(sources, train, (16, 16), IDENTITY, seed=0).batch(2000)
    assert set(np.unique(batch)) == {1.0, 2.0}
    share_small = float(np.mean(batch[:, 0, 0, 0] == 1.0))
    assert 0.05 < share_small < 0.12  # by voxels: 1024 / (1024 + 12288) = 0.077


# ---------------------------------------------------------------------------------- Prefetcher


def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name == Prefetcher.THREAD_NAME]


def test_prefetcher_keeps_order_and_stops_its_thread():
    counter = iter(range(10**9))
    with Prefetcher(lambda: next(counter), depth=2) as prefetcher:
        assert [prefetcher.get() for _ in range(20)] == list(range(20))
        time.sleep(0.05)  # the producer is now blocked on the full queue: close must still end it
    assert not _prefetch_threads()


def test_prefetcher_hands_the_producers_error_to_the_consumer():
    calls = []

    def make():
        calls.append(1)
        if len(calls) == 3:
            raise ValueError("bad patch")
        return len(calls)

    prefetcher = Prefetcher(make)
    assert [prefetcher.get(), prefetcher.get()] == [1, 2]
    with pytest.raises(ValueError, match="bad patch"):
        prefetcher.get()
    prefetcher.close()
    assert not _prefetch_threads()
