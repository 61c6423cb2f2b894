"""Zarr arrays and OME-Zarr images (NGFF 0.4 or 0.5), read with the zarr library itself: the array, its axes
and pixel sizes from the metadata, and chunk reads that fail with one line naming the store.

``images.read_image`` chooses the axes and whether to read lazily; zarr is imported only when a store is
read (the [distributed] extra).
"""

from __future__ import annotations

import contextlib
import importlib.util
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SelfDenoiseError
from .ome import short_unit

_OME_AXIS_NAMES = {"t": "T", "c": "C", "z": "Z", "y": "Y", "x": "X", "s": "S"}


def is_zarr_store(path) -> bool:
    """A zarr (v2 or v3) array or group folder that the zarr library, when installed, can open."""
    p = Path(path)
    return p.is_dir() and any((p / name).is_file() for name in (".zgroup", ".zarray", "zarr.json")) \
        and importlib.util.find_spec("zarr") is not None


@dataclass
class ZarrImage:
    """The array to read (``CheckedChunks``), the axes the store names (None when it does not), and the
    pixel size and unit per axis letter."""

    array: CheckedChunks
    axes: str | None
    scale: dict[str, float] = field(default_factory=dict)
    units: dict[str, str] = field(default_factory=dict)


def open_zarr(p: Path) -> ZarrImage:
    """A zarr array or OME-Zarr image (its full-resolution level); nothing is read yet.

    Chunks that were never written read as the array's fill value, as zarr defines (writers skip
    chunks that hold only the fill value); a warning says how many there are.
    """
    import zarr

    try:
        node = zarr.open(str(p), mode="r")
        array, file_axes, scale, units = _zarr_image(p, node)
        stored, total = array.nchunks_initialized, array.nchunks
    except SelfDenoiseError:
        raise
    except Exception as exc:  # noqa: BLE001 -- zarr and its codecs raise many kinds on broken stores
        raise SelfDenoiseError(f"cannot read {p} as zarr: {exc}") from None
    if stored < total:  # stacklevel: the caller of read_image
        warnings.warn(f"{p}: {total - stored} of {total} chunks are not stored; they read as the fill value "
                      f"{array.fill_value} (zarr's rule for chunks never written)", stacklevel=4)
    return ZarrImage(CheckedChunks(array, p), file_axes, scale, units)


class CheckedChunks:
    """A zarr array whose reads raise one ``SelfDenoiseError`` naming the store when a chunk cannot be
    decoded (not valid zlib/blosc data, cut short): zarr reads lazily, long after ``read_image``."""

    def __init__(self, array, path):
        self.array, self.path = array, path
        self.shape, self.dtype, self.ndim, self.chunks = array.shape, array.dtype, array.ndim, array.chunks
        self.nbytes = array.nbytes

    def __getitem__(self, index):
        try:
            return self.array[index]
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 -- zlib.error, blosc's RuntimeError, ValueError on a short chunk...
            _settle_zarr_tasks()
            raise SelfDenoiseError(f"cannot read {self.path}: a chunk is damaged ({type(exc).__name__}: "
                                   f"{str(exc)[:200]}); copy or write the store again") from None


def _settle_zarr_tasks(timeout: float = 5.0) -> None:
    """Let zarr's other chunk reads finish after one failed. zarr decodes chunks as concurrent tasks on its
    own event loop; the first error returns at once and leaves the rest pending, and each one still pending
    at exit prints "Task was destroyed but it is pending!" under our one-line error."""
    import asyncio

    try:
        from zarr.core.sync import sync
    except ImportError:  # another zarr layout: the worst case is that noise at exit
        return

    async def settle():
        others = asyncio.all_tasks() - {asyncio.current_task()}
        if others:
            await asyncio.wait(others, timeout=timeout)

    with contextlib.suppress(Exception):  # best effort: the damaged chunk's error is what the user must see
        sync(settle())


def _zarr_image(p: Path, node):
    """(array, axes or None, scale, units) of a zarr array or an OME-Zarr group."""
    import zarr

    if isinstance(node, zarr.Array):
        names = node.metadata.dimension_names if node.metadata.zarr_format == 3 else \
            node.attrs.get("_ARRAY_DIMENSIONS")
        file_axes = "".join(_OME_AXIS_NAMES.get(str(n).lower(), "?") for n in names) if names else None
        return node, (None if file_axes is None or "?" in file_axes else file_axes), {}, {}
    attrs = node.attrs.asdict()
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        arrays = [name for name, _ in node.arrays()]
        if len(arrays) != 1:
            raise SelfDenoiseError(f"{p} is a zarr group without OME-Zarr metadata and with {len(arrays)} arrays; "
                                   "give the path of one array inside it")
        return _zarr_image(p, node[arrays[0]])
    image = multiscales[0]
    level = image["datasets"][0]
    entries = image.get("axes") or []
    names = [e["name"] if isinstance(e, dict) else e for e in entries]
    file_axes = "".join(_OME_AXIS_NAMES.get(str(n).lower(), "?") for n in names) or None
    if file_axes is not None and "?" in file_axes:
        file_axes = None
    scale, units = {}, {}
    factors = next((t["scale"] for t in level.get("coordinateTransformations", []) if t.get("type") == "scale"),
                   None)
    if file_axes and factors and len(factors) == len(file_axes):
        for axis, factor, entry in zip(file_axes, factors, entries):
            if axis in "ZYX" and float(factor) > 0:
                scale[axis] = float(factor)
                unit = entry.get("unit") if isinstance(entry, dict) else None
                if unit:
                    units[axis] = short_unit(unit)
    return node[level["path"]], file_axes, scale, units
