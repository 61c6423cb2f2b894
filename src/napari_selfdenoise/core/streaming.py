"""Bounded-memory prediction: a stack of any size is predicted block by block straight into a file on
disk, an OME-Zarr (``.ome.zarr``/``.zarr``) or an OME-TIFF written in place.

A block is one sample (S/T frame) and a box of the spatial axes. Its result comes from the tiles of the
whole image's tile grid that touch it (``TiledPredictor.predict_block``), so blocks are independent
and their results are bit for bit the in-memory ones: blocks can run in any order, in any process
(``cluster.py``). Blocks are whole output chunks, so two blocks never write the same chunk.
Memory follows one block (and the tiles around it), never the stack.

Outputs are written under a temporary name in the same folder and renamed when every block is in; an
existing output is replaced only with ``overwrite``. A full disk or any other failure removes the
temporary output and leaves the final name as it was.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .axes import Layout
from .data import check_image
from .errors import SelfDenoiseError
from .lazy import as_array, release_pages, to_numpy

ZARR_SUFFIXES = (".ome.zarr", ".zarr")
TIFF_OUT_SUFFIXES = (".ome.tif", ".ome.tiff", ".tif", ".tiff")
# Output chunks and blocks (a whole number of chunks) per spatial axis. 3D blocks are thick in Z so
# that few tiles are predicted twice at block borders.
CHUNK = {2: (1024, 1024), 3: (16, 256, 256)}
BLOCK = {2: (2048, 2048), 3: (128, 512, 512)}
BLOCK_VOXELS = 2048 * 2048 * 4  # TIFF blocks span whole rows: about this many voxels (64 MB float32)
_OME_ZARR_VERSION = "0.4"  # zarr format 2: read by napari-ome-zarr, ome-zarr-py, bioio, Fiji (MoBIE)
_UNIT_NAMES = {"µm": "micrometer", "nm": "nanometer", "mm": "millimeter", "cm": "centimeter", "m": "meter",
               "Å": "angstrom"}


def is_zarr_path(path) -> bool:
    return str(path).lower().rstrip("/\\").endswith(ZARR_SUFFIXES)


@dataclass(frozen=True)
class Block:
    """One sample (index along the flattened S/T axes) and a [start, stop) range per spatial axis."""

    sample: int
    box: tuple[tuple[int, int], ...]


# ----------------------------------------------------------------------------------- geometry


def block_grid(layout: Layout, block: tuple[int, ...]) -> list[Block]:
    """All blocks of an image, samples outermost, in C order of the spatial block grid."""
    spatial = layout.spatial_shape
    ranges = [[(a, min(a + b, s)) for a in range(0, s, b)] for s, b in zip(spatial, block)]
    grid = np.stack(np.meshgrid(*[range(len(r)) for r in ranges], indexing="ij"), -1).reshape(-1, len(spatial))
    boxes = [tuple(ranges[a][k] for a, k in enumerate(index)) for index in grid]
    return [Block(i, box) for i in range(layout.n_samples) for box in boxes]


def chunk_and_block(spatial: tuple[int, ...], whole_rows: bool, block=None) -> tuple[tuple, tuple]:
    """Output chunk and block shapes (the block a whole number of chunks). ``whole_rows`` (TIFF): blocks
    span all of X so each row of a block is one contiguous write. ``block`` overrides the default."""
    dims = len(spatial)
    chunk = tuple(min(c, s) for c, s in zip(CHUNK[dims], spatial))
    if block is not None:
        block = tuple(min(int(b), s) for b, s in zip(block, spatial))
        return block if whole_rows else tuple(min(c, b) for c, b in zip(chunk, block)), block
    if whole_rows:
        rows, width = min(spatial[-2], 256), spatial[-1]
        block = [min(s, max(16, BLOCK_VOXELS // (width * rows))) for s in spatial[:-2]]
        block += [min(spatial[-2], max(rows, BLOCK_VOXELS // (width * int(np.prod(block))))), width]
        return tuple(block), tuple(block)
    block = tuple(min(-(-b // c) * c, s) for b, c, s in zip(BLOCK[dims], chunk, spatial))
    return chunk, block


def _sample_position(layout: Layout, sample: int) -> dict[str, int]:
    axes = [a for a in layout.axes if a in "ST"]
    sizes = [layout.shape[layout.axes.index(a)] for a in axes]
    return dict(zip(axes, (int(i) for i in np.unravel_index(sample, sizes)))) if axes else {}


def region_index(axes: str, layout: Layout, sample: int, box) -> tuple:
    """The index of (sample, box) in an array with ``axes`` (the input's, or the output's order)."""
    position = _sample_position(layout, sample)
    spatial = dict(zip([a for a in "ZYX" if a in layout.axes], box))
    index = []
    for axis in axes:
        if axis in position:
            index.append(position[axis])
        elif axis == "C":
            index.append(slice(None))
        else:
            lo, hi = spatial[axis]
            index.append(slice(int(lo), int(hi)))
    return tuple(index)


def read_box(source, layout: Layout, sample: int, box) -> np.ndarray:
    """The raw (C, *box) values of one sample of ``source`` (in its own axes), read lazily."""
    data = to_numpy(source[region_index(layout.axes, layout, sample, box)])
    kept = [a for a in layout.axes if a not in "ST"]
    data = data.transpose([kept.index(a) for a in "CZYX" if a in kept])
    return data if "C" in layout.axes else data[None]


def tile_reader(source, layout: Layout, sample: int):
    """``read_tile(box)`` for ``TiledPredictor.predict_block``: boxes of the image reflect-padded at its
    far ends (as ``np.pad(..., mode='reflect')`` pads the whole image), read from ``source``."""
    spatial = layout.spatial_shape

    def read_tile(box) -> np.ndarray:
        indices = [np.pad(np.arange(size), (0, max(0, s.stop - size)), mode="reflect")[s.start : s.stop]
                   for s, size in zip(box, spatial)]
        ranges = [(int(i.min()), int(i.max()) + 1) for i in indices]
        raw = read_box(source, layout, sample, ranges)
        if any(len(i) != hi - lo for i, (lo, hi) in zip(indices, ranges)):  # the tile reaches the padding
            raw = raw[np.ix_(range(raw.shape[0]), *[i - lo for i, (lo, _) in zip(indices, ranges)])]
        return raw

    return read_tile


def predict_block(predictor, plan, source, layout: Layout, normalization, block: Block, outputs) -> dict:
    """Every output of one block, each (C, *box) float32 in the input's units."""
    stacked = predictor.predict_block(plan, tile_reader(source, layout, block.sample), block.box, normalization)
    c = layout.channels
    return {name: stacked[k * c : (k + 1) * c] for k, name in enumerate(outputs)}


# ----------------------------------------------------------------------------------- sinks


def output_axes(axes: str, zarr: bool) -> str:
    """The axes order of an output file: OME-Zarr wants T, then C (or S), then Z, Y, X; OME-TIFF any
    order with Y, X last (``io._ome_order``)."""
    if zarr:
        if "S" in axes and "C" in axes:
            raise SelfDenoiseError("OME-Zarr cannot hold both samples (S) and channels (C); write an "
                                   ".ome.tif instead, or give the samples as T")
        return "".join(a for a in "TSCZYX" if a in axes)
    from .io import _ome_order

    return _ome_order(np.empty((1,) * len(axes)), axes)[1]


class ZarrSink:
    """An OME-Zarr (format 2, NGFF 0.4) image of float32 written chunk-aligned, from any process."""

    def __init__(self, final: str, tmp: str, axes: str, shape, chunks):
        self.final, self.tmp, self.axes, self.shape, self.chunks = final, tmp, axes, tuple(shape), tuple(chunks)
        self._array = None

    @classmethod
    def create(cls, path: Path, axes: str, shape, chunks, scale, units) -> "ZarrSink":
        import zarr

        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.part"
        group = zarr.open_group(str(tmp), mode="w-", zarr_format=2)
        group.create_array("0", shape=tuple(shape), chunks=tuple(chunks), dtype="float32", fill_value=0.0,
                           chunk_key_encoding={"name": "v2", "separator": "/"})
        group.attrs["multiscales"] = [_ome_multiscales(axes, scale or {}, units or {})]
        group.attrs["selfdenoise"] = {"axes": axes}
        return cls(str(path), str(tmp), axes, shape, chunks)

    def __getstate__(self):  # sent to dask workers: paths only
        return {**self.__dict__, "_array": None}

    def write(self, index, data: np.ndarray) -> None:
        if self._array is None:
            import zarr

            self._array = zarr.open_array(os.path.join(self.tmp, "0"), mode="r+", zarr_format=2)
        self._array[index] = data

    def commit(self, overwrite: bool) -> None:
        _replace(Path(self.tmp), Path(self.final), overwrite)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


class TiffSink:
    """An uncompressed (Big)OME-TIFF of float32, its pixels written in place with ``os.pwrite``.

    tifffile lays the file out with contiguous pixel data; blocks then write their rows at their
    offsets (no memory-map, so written pages never count as this process's memory)."""

    def __init__(self, final: str, tmp: str, axes: str, shape, offset: int):
        self.final, self.tmp, self.axes, self.shape, self.offset = final, tmp, axes, tuple(shape), offset

    @classmethod
    def create(cls, path: Path, axes: str, shape, scale, units) -> "TiffSink":
        import tifffile

        from .io import _S_MARKER, _norm_unit

        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.part"
        metadata: dict = {"axes": axes.replace("S", "Q")}
        if "S" in axes:
            metadata["TypeDescription"] = {"Q": _S_MARKER}
        for axis in "XYZ":
            if axis in axes and (scale or {}).get(axis):
                metadata[f"PhysicalSize{axis}"] = float(scale[axis])
                if (units or {}).get(axis):
                    metadata[f"PhysicalSize{axis}Unit"] = _norm_unit(units[axis])
        try:
            offset, _ = tifffile.imwrite(tmp, shape=tuple(shape), dtype="float32", ome=True,
                                         photometric="minisblack", metadata=metadata, returnoffset=True)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return cls(str(path), str(tmp), axes, shape, int(offset))

    def write(self, index, data: np.ndarray) -> None:
        data = np.ascontiguousarray(data, dtype="<f4")
        starts = [i if isinstance(i, int) else i.start for i in index]
        full = [isinstance(i, slice) and i.start == 0 and i.stop == n for i, n in zip(index, self.shape)]
        block = [1 if isinstance(i, int) else i.stop - i.start for i in index]
        # the axes from `split` on are written in one piece: all the later ones are whole
        split = len(full) - 1
        while split > 0 and full[split]:
            split -= 1
        run = data.reshape(int(np.prod(block[:split])), -1)
        strides = np.cumprod([1] + list(self.shape[::-1]))[::-1][1:]  # elements per step of each axis
        fd = os.open(self.tmp, os.O_WRONLY)
        try:
            for row, lead in zip(run, np.ndindex(*block[:split])):
                element = sum((s + k) * st for s, k, st in zip(starts[:split], lead, strides[:split]))
                element += sum(s * st for s, st in zip(starts[split:], strides[split:]))
                _pwrite_all(fd, row.tobytes(), self.offset + 4 * int(element))
        finally:
            os.close(fd)

    def commit(self, overwrite: bool) -> None:
        _replace(Path(self.tmp), Path(self.final), overwrite)

    def abort(self) -> None:
        Path(self.tmp).unlink(missing_ok=True)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _ome_multiscales(axes: str, scale: dict, units: dict) -> dict:
    types = {"T": "time", "C": "channel", "Z": "space", "Y": "space", "X": "space"}
    entries = []
    for axis in axes:
        entry = {"name": axis.lower()}
        if axis in types:
            entry["type"] = types[axis]
        if axis in "ZYX" and units.get(axis):
            entry["unit"] = _UNIT_NAMES.get(units[axis], units[axis])
        entries.append(entry)
    factors = [float(scale.get(a, 1.0)) for a in axes]
    return {"version": _OME_ZARR_VERSION, "name": "denoised", "axes": entries,
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": factors}]}]}


def _replace(tmp: Path, final: Path, overwrite: bool) -> None:
    """Give ``tmp`` the final name; an existing final file or folder is removed only after that."""
    if final.exists() and not overwrite:
        raise SelfDenoiseError(f"{final} exists; pass --overwrite (overwrite=True) to replace it")
    if final.is_dir() and not tmp.is_dir():
        raise SelfDenoiseError(f"{final} is a folder; remove it or choose another output name")
    aside = None
    if final.is_dir():  # a folder cannot be replaced by a rename: move the old one aside first
        aside = final.parent / f".{final.name}.{uuid.uuid4().hex[:8]}.old"
        os.replace(final, aside)
    os.replace(tmp, final)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def check_target(path, overwrite: bool) -> Path:
    """An output path we can write: a known type, its folder exists, and no clobbering unasked."""
    path = Path(path)
    name = path.name.lower()
    if not (is_zarr_path(path) or name.endswith(TIFF_OUT_SUFFIXES)):
        raise SelfDenoiseError(f"cannot stream to {path}: use a name ending in .ome.zarr, .zarr or .ome.tif")
    if not path.parent.is_dir():
        raise SelfDenoiseError(f"cannot write {path}: the folder {path.parent} does not exist")
    if path.exists() and not overwrite:
        raise SelfDenoiseError(f"{path} exists; pass --overwrite to replace it")
    if path.exists() and path.is_dir() and not is_zarr_path(path):
        raise SelfDenoiseError(f"{path} is a folder; give a file name")
    return path


def open_sinks(targets: dict, layout: Layout, scale, units, block_override=None, require_zarr: bool = False):
    """One sink per output, and the block shape that fits all of them (checked before any work)."""
    targets = {name: Path(p) for name, p in targets.items()}
    zarr_out = {is_zarr_path(p) for p in targets.values()}
    if require_zarr and zarr_out != {True}:
        raise SelfDenoiseError("distributed prediction writes OME-Zarr: give outputs ending in .ome.zarr")
    chunks, block = chunk_and_block(layout.spatial_shape, whole_rows=False in zarr_out, block=block_override)
    sinks = {}
    try:
        for name, path in targets.items():
            zarr = is_zarr_path(path)
            axes = output_axes(layout.axes, zarr)
            shape = [layout.shape[layout.axes.index(a)] for a in axes]
            if zarr:
                spatial_chunks = dict(zip([a for a in "ZYX" if a in axes], chunks))
                chunk_shape = [spatial_chunks.get(a, 1 if a in "ST" else n) for a, n in zip(axes, shape)]
                sinks[name] = ZarrSink.create(path, axes, shape, chunk_shape, scale, units)
            else:
                _check_free_space(path, int(np.prod(shape)) * 4)
                sinks[name] = TiffSink.create(path, axes, shape, scale, units)
    except BaseException:
        for sink in sinks.values():
            sink.abort()
        raise
    return sinks, block


def _check_free_space(path: Path, needed: int) -> None:
    free = shutil.disk_usage(path.parent).free
    if free < needed * 1.02 + 64 * 1024**2:
        raise SelfDenoiseError(f"{path} needs {needed / 1e9:.1f} GB but its disk has {free / 1e9:.1f} GB free; "
                               "free some space or write elsewhere")


def write_block(sinks: dict, layout: Layout, block: Block, results: dict) -> None:
    """Put each output of a block into its sink, in the sink's axes order."""
    canonical = [a for a in "CZYX" if a in layout.axes or a == "C"]
    for name, data in results.items():
        sink = sinks[name]
        kept = [a for a in sink.axes if a not in "ST"]
        values = data if "C" in layout.axes else data[0]
        present = [a for a in canonical if a in kept]
        values = values.transpose([present.index(a) for a in kept])
        sink.write(region_index(sink.axes, layout, block.sample, block.box), values)


def disk_full_error(err: OSError, targets) -> SelfDenoiseError:
    names = ", ".join(str(p) for p in targets)
    return SelfDenoiseError(f"the disk filled up while writing {names}: nothing was left under that name; "
                            "free some space (or write elsewhere) and run again")


def finish(sinks: dict, overwrite: bool) -> list[Path]:
    for sink in sinks.values():
        sink.commit(overwrite)
    return [Path(sink.final) for sink in sinks.values()]


# ----------------------------------------------------------------------------------- one process


def predict_to_disk(denoiser, image, axes: str, targets: dict, *, overwrite: bool = False, scale=None,
                    units=None, tile=None, tta: bool = False, batch_size: int | None = None, device: str | None = None,
                    block=None):
    """A step generator: predicts ``image`` block by block into ``targets`` ({output name: path}),
    yields (blocks done, blocks) and returns the paths written."""
    image = as_array(image)
    layout = check_image(image, axes)
    denoiser._check_compatible(layout)
    unknown = set(targets) - set(denoiser.method.outputs)
    if unknown:
        raise SelfDenoiseError(f"the model has no {', '.join(sorted(unknown))} output; it has "
                               f"{', '.join(denoiser.method.outputs)}")
    paths = {name: check_target(p, overwrite) for name, p in targets.items()}
    predictor = denoiser.predictor(tile=tile, batch_size=batch_size, tta=tta, device=device)
    plan = predictor.plan(layout.spatial_shape)
    sinks, block_shape = open_sinks(paths, layout, scale, units, block)
    blocks = block_grid(layout, block_shape)
    try:
        for done, block_ in enumerate(blocks, start=1):
            results = predict_block(predictor, plan, image, layout, denoiser.normalization, block_,
                                    denoiser.method.outputs)
            write_block(sinks, layout, block_, {n: r for n, r in results.items() if n in sinks})
            release_pages(image)
            yield done, len(blocks)
        return finish(sinks, overwrite)
    except OSError as err:
        for sink in sinks.values():
            sink.abort()
        if err.errno == errno.ENOSPC:
            raise disk_full_error(err, paths.values()) from None
        raise
    except BaseException:
        for sink in sinks.values():
            sink.abort()
        raise
    finally:
        if not (denoiser._trainer is not None and denoiser._trainer.running):
            denoiser.network.to("cpu")
