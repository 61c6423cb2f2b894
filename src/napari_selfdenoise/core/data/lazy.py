"""Lazy arrays: numpy memory-maps, dask arrays and zarr (or any array-like with ``shape``, ``dtype`` and
slicing) are read a region at a time, so nothing loads a whole stack.

Memory-mapped files: pages read through a map count as the process's resident memory until they are
unmapped, so long passes over a memory-map call ``release_pages`` now and then (the data stay in the
operating system's file cache; the process just stops holding them).
"""

from __future__ import annotations

import mmap

import numpy as np

# The one size (bytes) above which an array is not read whole: a file is memory-mapped (or read as dask)
# when opened (core.io.images), the CLI streams such an input block by block into its output, the widgets keep
# such a layer lazy and stream its prediction, and training takes normalisation statistics from a
# subsample. 256 MB, not the widgets' former 512 MB: it is the limit the CLI and the reader document, and
# the in-memory path holds float32 outputs of up to 4x the input (uint8) per output besides the input.
LAZY_THRESHOLD = 256 * 1024**2


def is_dask(array) -> bool:
    return type(array).__module__.startswith("dask.")


def is_lazy(array) -> bool:
    """True for anything but an ordinary in-memory numpy array (memory-maps, dask, zarr, h5py...)."""
    return not isinstance(array, np.ndarray) or _memmap_base(array) is not None


def as_array(array):
    """numpy (memory-maps included) and dask arrays as they are; other array-likes (zarr, h5py) as a
    dask array over their own chunks, so they can be transposed and reshaped without being read."""
    if isinstance(array, np.ndarray) or is_dask(array):
        return array
    if hasattr(array, "shape") and hasattr(array, "dtype") and hasattr(array, "__getitem__"):
        import dask.array as da

        chunks = getattr(array, "chunks", None)
        return da.from_array(array, chunks=chunks if isinstance(chunks, tuple) else "auto")
    return array  # not an array at all: the input checks say so


def to_numpy(region) -> np.ndarray:
    """Read a (small) region of a lazy array into memory. dask computes in this thread: inside a
    dask.distributed worker the global scheduler must not be re-entered."""
    if is_dask(region):
        return np.asarray(region.compute(scheduler="synchronous"))
    return np.asarray(region)


def nbytes(array) -> int:
    return int(np.prod(array.shape)) * np.dtype(array.dtype).itemsize


def release_pages(array) -> None:
    """Drop the pages of the memory-map behind ``array`` (if any) from this process's resident memory."""
    mapped = _memmap_base(array)
    if mapped is not None and hasattr(mapped, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        try:
            mapped.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):  # a closed map, or a system without it: only memory is at stake
            pass


def _memmap_base(array):
    """The ``mmap.mmap`` a numpy array views (memory-maps keep it on views too), or None."""
    base = array
    for _ in range(32):  # a chain of views
        if isinstance(base, mmap.mmap):
            return base
        if getattr(base, "_mmap", None) is not None:
            return base._mmap
        base = getattr(base, "base", None)
        if base is None:
            return None
    return None


def slabs(array, max_elements: int):
    """Consecutive pieces of ``array`` along its first axes, each of at most about ``max_elements``
    values, as numpy arrays; memory-mapped pages are released after each piece."""
    if array.ndim == 0 or nbytes(array) == 0:
        yield to_numpy(array)
        return
    per_index = int(np.prod(array.shape[1:]))
    if per_index > max_elements and array.ndim > 1:
        for i in range(array.shape[0]):
            yield from slabs(array[i], max_elements)
        return
    step = max(1, max_elements // max(per_index, 1))
    for start in range(0, array.shape[0], step):
        yield to_numpy(array[start : start + step])
        release_pages(array)
