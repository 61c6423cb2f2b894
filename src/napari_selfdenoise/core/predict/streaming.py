"""Bounded-memory prediction: a stack of any size is predicted block by block straight into a file on
disk, an OME-Zarr (``.ome.zarr``/``.zarr``) or an OME-TIFF written in place.

A block is one sample (S/T frame) and a box of the spatial axes. Its result comes from the tiles of the
whole image's tile grid that touch it (``TiledPredictor.predict_block``), so blocks are independent
and their results are bit for bit the in-memory ones: blocks can run in any order, in any process
(``cluster.py``). Blocks are whole output chunks, so two blocks never write the same chunk.
Memory follows one block (and the tiles around it), never the stack.

Outputs are written under a temporary name in the same folder and renamed when every block is in
(``atomic.atomic_write``); an existing output is replaced only with ``overwrite``. A full disk or any
other failure removes the temporary output and leaves the final name as it was.
"""

from __future__ import annotations

import itertools
import os
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.axes import Layout
from ..data.checks import check_image
from ..data.lazy import as_array, release_pages, to_numpy
from ..errors import SelfDenoiseError
from ..io.atomic import atomic_write, check_free_space, interrupts_deferred
from ..io.ome import ngff_unit, ome_order, ome_tiff_metadata
from ..io.outputs import is_zarr_path, plan_output

TIFF_OUT_SUFFIXES = (".ome.tif", ".ome.tiff", ".tif", ".tiff")
# Output chunks and blocks (a whole number of chunks) per spatial axis. 3D blocks are thick in Z so
# that few tiles are predicted twice at block borders.
CHUNK = {2: (1024, 1024), 3: (16, 256, 256)}
BLOCK = {2: (2048, 2048), 3: (128, 512, 512)}
BLOCK_VOXELS = 2048 * 2048 * 4  # TIFF blocks span whole rows: about this many voxels (64 MB float32)
_OME_ZARR_VERSION = "0.4"  # zarr format 2: read by napari-ome-zarr, ome-zarr-py, bioio, Fiji (MoBIE)


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
    order with Y, X last (``io.ome.ome_order``)."""
    if zarr:
        if "S" in axes and "C" in axes:
            raise SelfDenoiseError("OME-Zarr cannot hold both samples (S) and channels (C); write an "
                                   ".ome.tif instead, or give the samples as T")
        return "".join(a for a in "TSCZYX" if a in axes)
    return ome_order(np.empty((1,) * len(axes)), axes)[1]


class ZarrSink:
    """An OME-Zarr (format 2, NGFF 0.4) image of float32 written chunk-aligned, from any process, at
    ``path`` (a temporary name: ``atomic_write`` gives the finished output its final name)."""

    def __init__(self, path: str, axes: str, shape, chunks):
        self.path, self.axes, self.shape, self.chunks = path, axes, tuple(shape), tuple(chunks)
        self._array = None

    @classmethod
    def create(cls, path: Path, axes: str, shape, chunks, scale, units) -> ZarrSink:
        import zarr

        with interrupts_deferred():  # zarr writes in its own thread (see ``write``)
            group = zarr.open_group(str(path), mode="w-", zarr_format=2)
            group.create_array("0", shape=tuple(shape), chunks=tuple(chunks), dtype="float32", fill_value=0.0,
                               chunk_key_encoding={"name": "v2", "separator": "/"})
            group.attrs["multiscales"] = [_ome_multiscales(axes, scale or {}, units or {})]
            group.attrs["selfdenoise"] = {"axes": axes}
        return cls(str(path), axes, shape, chunks)

    def __getstate__(self):  # sent to dask workers: paths only
        return {**self.__dict__, "_array": None}

    def write(self, index, data: np.ndarray) -> None:
        if self._array is None:
            import zarr

            self._array = zarr.open_array(os.path.join(self.path, "0"), mode="r+", zarr_format=2)
        # One chunk per call, with Ctrl-C and SIGTERM held: zarr writes in its own thread, and a write
        # still running there after a failure (a full disk, an interrupt) would recreate folders in an
        # output that is being removed.
        for target, part in self._chunks(index):
            with interrupts_deferred():
                self._array[target] = data[part]

    def _chunks(self, index):
        """(index in the array, index in the block's data) of each chunk of a chunk-aligned region."""
        axes = []
        for i, chunk, size in zip(index, self.chunks, self.shape):
            if isinstance(i, int):  # a sample axis: not in the data
                axes.append([(i, None)])
                continue
            lo, hi = i.start or 0, size if i.stop is None else i.stop
            axes.append([(slice(a, min(a + chunk, hi)), slice(a - lo, min(a + chunk, hi) - lo))
                         for a in range(lo, hi, chunk)])
        for combination in itertools.product(*axes):
            yield (tuple(t for t, _ in combination), tuple(p for _, p in combination if p is not None))


class TiffSink:
    """An uncompressed (Big)OME-TIFF of float32 at ``path`` (a temporary name, as for ``ZarrSink``), its
    pixels written in place with ``os.pwrite``.

    tifffile lays the file out with contiguous pixel data; blocks then write their rows at their
    offsets (no memory-map, so written pages never count as this process's memory)."""

    def __init__(self, path: str, axes: str, shape, offset: int):
        self.path, self.axes, self.shape, self.offset = path, axes, tuple(shape), offset

    @classmethod
    def create(cls, path: Path, axes: str, shape, scale, units) -> TiffSink:
        import tifffile

        offset, _ = tifffile.imwrite(path, shape=tuple(shape), dtype="float32", ome=True,
                                     photometric="minisblack",
                                     metadata=ome_tiff_metadata(axes, scale, units), returnoffset=True)
        return cls(str(path), axes, shape, int(offset))

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
        fd = os.open(self.path, os.O_WRONLY)
        try:
            for row, lead in zip(run, np.ndindex(*block[:split])):
                element = sum((s + k) * st for s, k, st in zip(starts[:split], lead, strides[:split]))
                element += sum(s * st for s, st in zip(starts[split:], strides[split:]))
                _pwrite_all(fd, row.tobytes(), self.offset + 4 * int(element))
        finally:
            os.close(fd)


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
            entry["unit"] = ngff_unit(units[axis])
        entries.append(entry)
    factors = [float(scale.get(a, 1.0)) for a in axes]
    return {"version": _OME_ZARR_VERSION, "name": "denoised", "axes": entries,
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": factors}]}]}


def check_target(path, overwrite: bool) -> Path:
    """An output path we can write: a known type, and the rules of ``outputs.plan_output``."""
    path = Path(path)
    if not (is_zarr_path(path) or path.name.lower().endswith(TIFF_OUT_SUFFIXES)):
        raise SelfDenoiseError(f"cannot stream to {path}: use a name ending in .ome.zarr, .zarr or .ome.tif")
    return plan_output(path, overwrite=overwrite)


def open_outputs(stack: ExitStack, targets: dict, overwrite: bool) -> dict:
    """Enter an ``atomic_write`` per output on ``stack``; returns {output name: temporary path}: the
    outputs get their final names when the stack closes normally, and are removed otherwise."""
    return {name: stack.enter_context(atomic_write(path, overwrite=overwrite)) for name, path in targets.items()}


def open_sinks(targets: dict, temps: dict, layout: Layout, scale, units, block_override=None,
               require_zarr: bool = False):
    """One sink per output (``targets``: {output name: final path}, which decides the format; ``temps``:
    where to write it, from ``open_outputs``), and the block shape that fits all of them."""
    targets = {name: Path(p) for name, p in targets.items()}
    zarr_out = {is_zarr_path(p) for p in targets.values()}
    if require_zarr and zarr_out != {True}:
        raise SelfDenoiseError("distributed prediction writes OME-Zarr: give outputs ending in .ome.zarr")
    chunks, block = chunk_and_block(layout.spatial_shape, whole_rows=False in zarr_out, block=block_override)
    sinks = {}
    for name, path in targets.items():
        zarr = is_zarr_path(path)
        axes = output_axes(layout.axes, zarr)
        shape = [layout.shape[layout.axes.index(a)] for a in axes]
        if zarr:
            spatial_chunks = dict(zip([a for a in "ZYX" if a in axes], chunks))
            chunk_shape = [spatial_chunks.get(a, 1 if a in "ST" else n) for a, n in zip(axes, shape)]
            sinks[name] = ZarrSink.create(temps[name], axes, shape, chunk_shape, scale, units)
        else:  # written sparse at first: the space must be there when the blocks come
            check_free_space(path, int(np.prod(shape)) * 4)
            sinks[name] = TiffSink.create(temps[name], axes, shape, scale, units)
    return sinks, block


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


# ----------------------------------------------------------------------------------- one process


def predict_to_disk(denoiser, image, axes: str, targets: dict, *, overwrite: bool = False, scale=None,
                    units=None, tile=None, tta: bool = False, batch_size: int | None = None, device: str | None = None,
                    block=None, precision: str = "auto", compiled: bool | None = None):
    """A step generator: predicts ``image`` block by block into ``targets`` ({output name: path}),
    yields (blocks done, blocks) and returns the paths written."""
    image = as_array(image)
    layout = check_image(image, axes)
    denoiser.check_layout(layout)
    unknown = set(targets) - set(denoiser.method.outputs)
    if unknown:
        raise SelfDenoiseError(f"the model has no {', '.join(sorted(unknown))} output; it has "
                               f"{', '.join(denoiser.method.outputs)}")
    paths = {name: check_target(p, overwrite) for name, p in targets.items()}
    predictor = denoiser.predictor(tile=tile, batch_size=batch_size, tta=tta, device=device, precision=precision,
                                   compiled=compiled)
    plan = predictor.plan(layout.spatial_shape, samples=layout.n_samples)
    outputs = denoiser.method.outputs
    try:
        return (yield from write_blocks(
            paths, image, layout,
            lambda block_: predict_block(predictor, plan, image, layout, denoiser.normalization, block_, outputs),
            overwrite=overwrite, scale=scale, units=units, block=block))
    finally:
        denoiser.release_device()


def write_blocks(paths: dict, image, layout: Layout, predict, *, overwrite: bool = False, scale=None, units=None,
                 block=None):
    """A step generator: ``predict(block)`` ({output name: (C, *box) float32}) for every block of
    ``image``, each written into its output (``paths``: {output name: path checked by ``check_target``});
    yields (blocks done, blocks) and returns the paths. The outputs get their names when all blocks are
    in; any failure (a full disk, Ctrl-C, SIGTERM) removes them. ``ForeignModel`` streams through it too."""
    with ExitStack() as stack:
        sinks, block_shape = open_sinks(paths, open_outputs(stack, paths, overwrite), layout, scale, units, block)
        blocks = block_grid(layout, block_shape)
        for done, block_ in enumerate(blocks, start=1):
            results = predict(block_)
            write_block(sinks, layout, block_, {n: r for n, r in results.items() if n in sinks})
            release_pages(image)
            yield done, len(blocks)
    return list(paths.values())
