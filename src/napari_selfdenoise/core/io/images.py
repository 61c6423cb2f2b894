"""Read and write images (TIFF / OME-TIFF / ImageJ TIFF and .npy; zarr / OME-Zarr through ``zarr_images``)
with their axes and pixel sizes.

Only numpy and tifffile (dask, and bioio or aicsimageio for other formats, imported only when asked
for): this module is shared by the CLI and the napari plugin, so it must never import Qt or napari.
"""

from __future__ import annotations

import importlib.util
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

from ..data.axes import default_axes, validate_axes
from ..data.lazy import LAZY_THRESHOLD
from ..errors import SelfDenoiseError
from .atomic import atomic_write, check_free_space
from .ome import SAMPLES_MARKER, ome_order, ome_tiff_metadata, short_unit
from .outputs import is_zarr_path
from .zarr_images import is_zarr_store, open_zarr

TIFF_SUFFIXES = (".tif", ".tiff")  # also covers .ome.tif / .ome.tiff
SUPPORTED = ".tif, .tiff, .ome.tif, .ome.tiff, .npy or .zarr/.ome.zarr"

# Other formats, through the optional [io] extra: bioio (with its per-format plugins) or, when only
# that is installed, its predecessor aicsimageio. Each suffix -> the bioio plugin that reads it.
OTHER_FORMATS = {
    ".czi": "bioio-czi",
    ".nd2": "bioio-nd2",
    ".lif": "bioio-lif",
    ".zarr": "bioio-ome-zarr",  # a folder; also covers .ome.zarr
    ".dv": "bioio-dv",
    ".r3d": "bioio-dv",
}
OTHER_SUFFIXES = tuple(OTHER_FORMATS)

# tifffile axis letters -> ours. 'S' is RGB(A) samples, i.e. colour channels. Anything else
# ('I' = plain image sequence, 'Q' = unknown, ...) is treated as unknown.
_TIFF_TO_OURS = {"T": "T", "C": "C", "Z": "Z", "Y": "Y", "X": "X", "S": "C"}

@dataclass
class ImageData:
    """An image with named axes; ``data`` may be a read-only ``np.memmap`` or a dask array."""

    data: np.ndarray
    axes: str
    scale: dict[str, float] = field(default_factory=dict)  # pixel size per axis letter
    units: dict[str, str] = field(default_factory=dict)
    path: str | None = None
    axes_guessed: bool = False  # the file did not say; ``default_axes`` of the dimension count


# ----------------------------------------------------------------------------------- reading


def read_image(
    path,
    axes: str | None = None,
    lazy: bool | None = None,
    *,
    guess_axes: bool = False,
    dask: bool = False,
) -> ImageData:
    """Read a TIFF or .npy file (or, with the [io] extra, CZI, ND2, LIF, OME-Zarr, DV).

    ``axes`` overrides the file's metadata. ``guess_axes``: when the file does not tell its axes
    (a bare 3-D TIFF), take ``default_axes`` of its dimension count and set ``axes_guessed``
    instead of raising. ``lazy``: True memory-maps when the file allows it, None does so for
    files over ``LAZY_THRESHOLD`` bytes (other formats: images over it). ``dask``: when lazy and
    the file cannot be memory-mapped (compressed, tiled, other formats), return a dask array that
    reads one plane or chunk at a time instead of reading everything now.
    """
    p = Path(path)
    if not p.exists():
        raise SelfDenoiseError(f"file not found: {p}")
    name = p.name.lower()
    if p.is_dir() and not is_zarr_path(p):
        raise SelfDenoiseError(f"{p} is a folder, not an image file; pass a {SUPPORTED} file")
    if is_zarr_store(p):
        image = _read_zarr(p, axes, lazy, guess_axes)
    elif name.endswith(OTHER_SUFFIXES):
        image = _read_other(p, axes, lazy, guess_axes, dask)
    else:
        if lazy is None:
            lazy = p.stat().st_size > LAZY_THRESHOLD
        if name.endswith(TIFF_SUFFIXES):
            image = _read_tiff(p, axes, lazy, guess_axes, dask)
        elif name.endswith(".npy"):
            image = _read_npy(p, axes, lazy)
        else:
            raise SelfDenoiseError(
                f"cannot read {p}: unsupported file type; use a {SUPPORTED} file"
            )
    if image.data.dtype.kind not in "buif":
        raise SelfDenoiseError(
            f"{p} holds {image.data.dtype} data; only numeric (integer or float) images can be used"
        )
    return image


def _read_npy(p: Path, axes: str | None, lazy: bool) -> ImageData:
    try:
        data = np.load(p, mmap_mode="r" if lazy else None, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc):  # object arrays need pickle, which can run arbitrary code
            raise SelfDenoiseError(
                f"{p} holds Python objects, which are not loaded for safety; "
                "save a plain numeric array with np.save"
            ) from None
        raise SelfDenoiseError(f"cannot read {p} as .npy: {exc}") from None
    except (OSError, EOFError) as exc:
        raise SelfDenoiseError(f"cannot read {p} as .npy: {exc}") from None
    if not isinstance(data, np.ndarray):
        raise SelfDenoiseError(f"{p} does not hold a single array; save one with np.save")
    axes = validate_axes(axes, data.shape) if axes else default_axes(data.ndim)
    return ImageData(data, axes, path=str(p))


def _read_tiff(p: Path, axes: str | None, lazy: bool, guess: bool, dask: bool) -> ImageData:
    try:
        with tifffile.TiffFile(p) as tif:
            series = tif.series[0]
            shape = tuple(series.shape)
            file_axes = _axes_from_tiff(series.axes, tif.ome_metadata if tif.is_ome else None)
            axes, guessed = _choose_axes(p, shape, file_axes, axes, guess)  # before reading
            _check_complete(p, series)
            data = _memmap_or_read(p, tif, series, dask) if lazy else series.asarray()
            scale, units = _scale_from_tiff(tif)
    except (SelfDenoiseError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 -- tifffile raises many kinds on corrupt files; none should escape raw
        raise SelfDenoiseError(f"cannot read {p} as TIFF: {exc}") from None
    scale = {a: v for a, v in scale.items() if a in axes}
    units = {a: u for a, u in units.items() if a in scale}
    return ImageData(data, axes, scale, units, str(p), guessed)


def _choose_axes(
    p: Path, shape: tuple[int, ...], file_axes: str | None, axes: str | None, guess: bool = False
) -> tuple[str, bool]:
    """The axes to use and whether they are a guess."""
    if axes:
        return validate_axes(axes, shape), False
    if file_axes is None and len(shape) == 2:
        file_axes = "YX"  # a plain 2-D TIFF is unambiguous
    if file_axes is None:
        if guess and 2 <= len(shape) <= 5:
            return default_axes(len(shape)), True
        example = default_axes(len(shape)) if 2 <= len(shape) <= 5 else "TZYX"
        raise SelfDenoiseError(
            f"cannot tell the axes of {p.name} (shape {shape}); pass them, e.g. --axes {example}"
        )
    return validate_axes(file_axes, shape), False


def _axes_from_tiff(tiff_axes: str, ome_xml: str | None) -> str | None:
    """Map tifffile's axes to ours, or None when any axis is unknown or they clash."""
    tiff_axes = tiff_axes.upper()
    if "Q" in tiff_axes and tiff_axes.count("Q") == 1 and _has_samples_marker(ome_xml):
        tiff_axes = tiff_axes.replace("Q", "_")  # our own S written as Q (see SAMPLES_MARKER)
    ours = "".join("S" if a == "_" else _TIFF_TO_OURS.get(a, "?") for a in tiff_axes)
    if "?" in ours or len(set(ours)) != len(ours) or "Y" not in ours or "X" not in ours:
        return None
    return ours


def _has_samples_marker(ome_xml: str | None) -> bool:
    if not ome_xml:
        return False
    try:
        root = ET.fromstring(ome_xml)
    except ET.ParseError:
        return False
    return any(
        el.tag.split("}")[-1].startswith("ModuloAlong")
        and el.attrib.get("TypeDescription") == SAMPLES_MARKER
        for el in root.iter()
    )


def _memmap_or_read(p: Path, tif: tifffile.TiffFile, series, dask: bool = False):
    """Memory-map series 0 read-only; when it is compressed, tiled, etc., a dask array reading one
    page at a time (``dask`` and dask installed, pages all in this file) or else all of it now."""
    try:
        data = tifffile.memmap(p, mode="r")
    except ValueError:  # "not memory-mappable"
        lazy = _dask_pages(p, tif, series) if dask else None
        return series.asarray() if lazy is None else lazy
    # tifffile may keep length-1 dimensions that series.shape squeezes away
    shape = tuple(series.shape)
    return data.reshape(shape) if data.shape != shape else data


def _dask_pages(p: Path, tif: tifffile.TiffFile, series):
    """A dask array over series 0, one chunk per TIFF page, or None when that does not fit."""
    try:
        import dask
        import dask.array as da
    except ImportError:
        return None
    pages = list(series.pages)
    if not pages or any(
        page is None or page.parent is not tif or not isinstance(page.index, int) for page in pages
    ):
        return None  # missing planes, planes in other files (multi-file OME) or in SubIFDs
    page_shape = tuple(series.keyframe.shape)
    shape = tuple(series.shape)
    if len(pages) * int(np.prod(page_shape)) != int(np.prod(shape)):
        return None
    read = dask.delayed(_read_page, pure=True)
    planes = [
        da.from_delayed(read(str(p), page.index), page_shape, dtype=series.dtype) for page in pages
    ]
    return da.stack(planes).reshape(shape)


def _read_page(path: str, index: int) -> np.ndarray:
    # Opening the file per page keeps no handle open and is safe from any thread (a few ms).
    try:
        with tifffile.TiffFile(path) as tif:
            return tif.pages[index].asarray()
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 -- read later than read_image (dask): still one line naming the file
        raise SelfDenoiseError(f"cannot read page {index} of {path}: {exc}; the file is damaged or was "
                               "changed while being read") from None


def _check_complete(p: Path, series) -> None:
    """Refuse a TIFF whose image data reach past the end of the file (cut short by a failed copy or
    download) now, rather than when a lazy reader gets to the missing pages."""
    size = p.stat().st_size
    if series.dataoffset is not None:  # contiguous: one range
        end = series.dataoffset + series.nbytes
    else:
        end = max((offset + count for page in series.pages if page is not None
                   for offset, count in zip(page.dataoffsets, page.databytecounts)), default=0)
    if end > size:
        raise SelfDenoiseError(f"cannot read {p} as TIFF: the file is truncated (its images need {end} bytes, "
                               f"it has {size}); copy or save it again")


def _scale_from_tiff(tif: tifffile.TiffFile) -> tuple[dict[str, float], dict[str, str]]:
    """Pixel sizes from OME or ImageJ metadata; any parsing problem just means no scale."""
    try:
        if tif.is_ome and tif.ome_metadata:
            return _scale_from_ome(tif.ome_metadata)
        if tif.is_imagej and tif.imagej_metadata is not None:
            return _scale_from_imagej(tif)
    except Exception:  # noqa: BLE001, S110 -- metadata is optional; a broken tag must not make the image unreadable
        pass
    return {}, {}


def _scale_from_ome(ome_xml: str) -> tuple[dict[str, float], dict[str, str]]:
    pixels = next(el for el in ET.fromstring(ome_xml).iter() if el.tag.endswith("Pixels"))
    scale, units = {}, {}
    for axis in "XYZ":
        value = pixels.attrib.get(f"PhysicalSize{axis}")
        if value is not None and float(value) > 0:
            scale[axis] = float(value)
            units[axis] = short_unit(pixels.attrib.get(f"PhysicalSize{axis}Unit", "µm"))
    return scale, units


def _scale_from_imagej(tif: tifffile.TiffFile) -> tuple[dict[str, float], dict[str, str]]:
    meta = tif.imagej_metadata
    unit = meta.get("unit")
    unit = short_unit(unit) if unit and unit.lower() not in ("pixel", "pixels") else None
    scale: dict[str, float] = {}
    tags = tif.pages.first.tags
    for axis in "XY":
        tag = tags.get(f"{axis}Resolution")
        if tag is not None:
            num, den = tag.value
            if num > 0 and (unit or num != den):  # 1 pixel per unit and no unit = uncalibrated
                scale[axis] = den / num  # the tag holds pixels per unit
    spacing = meta.get("spacing")
    if spacing and float(spacing) > 0:
        scale["Z"] = float(spacing)
    units = {a: unit for a in scale} if unit else {}
    return scale, units


# ----------------------------------------------------------------------------------- zarr


def _read_zarr(p: Path, axes: str | None, lazy: bool | None, guess: bool) -> ImageData:
    """A zarr array or OME-Zarr image (``zarr_images.open_zarr``); lazily (a dask array over the zarr
    chunks) when ``lazy`` or when it is big."""
    store = open_zarr(p)
    array = store.array
    final, guessed = _choose_axes(p, tuple(array.shape), store.axes, axes, guess)
    if lazy is None:
        lazy = array.nbytes > LAZY_THRESHOLD
    if lazy:
        import dask.array as da

        data = da.from_array(array, chunks=array.chunks, asarray=True, fancy=False)
    else:
        data = array[...]
    scale = {a: v for a, v in store.scale.items() if a in final}
    return ImageData(data, final, scale, {a: u for a, u in store.units.items() if a in scale}, str(p), guessed)


# ----------------------------------------------------------------------------- other formats


def other_formats_library() -> str | None:
    """'bioio' or 'aicsimageio' (the [io] extra) when importable, bioio first; else None."""
    for name in ("bioio", "aicsimageio"):
        if name in sys.modules:  # already imported (or blocked with None)
            if sys.modules[name] is not None:
                return name
        elif importlib.util.find_spec(name) is not None:
            return name
    return None


def _read_other(p: Path, axes: str | None, lazy: bool | None, guess: bool, dask: bool) -> ImageData:
    """CZI, ND2, LIF, OME-Zarr, DV through bioio's BioImage or aicsimageio's AICSImage.

    Both give a dask array in a fixed dimension order (T, C, Z, Y, X, plus S for RGB samples and
    M for mosaic tiles), and physical pixel sizes for Z, Y, X (None when unknown). Length-1
    dimensions are dropped; RGB samples become C. The first scene is read.
    """
    suffix = next((s for s in OTHER_SUFFIXES if p.name.lower().endswith(s)), p.suffix.lower())
    plugin = OTHER_FORMATS.get(suffix, f"the bioio plugin for {suffix} files")
    library = other_formats_library()
    if library is None:
        raise SelfDenoiseError(
            f"reading {suffix} files needs the [io] extra: pip install 'napari-selfdenoise[io]' "
            f"(bioio and {plugin})"
        )
    try:
        if library == "bioio":
            from bioio import BioImage as Reader
        else:
            from aicsimageio import AICSImage as Reader
        img = Reader(str(p))
        order, shape = str(img.dims.order), tuple(img.dims.shape)
        data = img.dask_data
        sizes = img.physical_pixel_sizes
        properties = getattr(img, "dimension_properties", None)  # bioio >= 3: units
    except Exception as exc:  # noqa: BLE001 -- readers raise many kinds; say which library and what to install
        hint = ""
        if "unsupported" in type(exc).__name__.lower() or "unsupported" in str(exc).lower()[:200]:
            hint = f"; install the bioio plugin for {suffix} files: pip install {plugin}"
        raise SelfDenoiseError(f"cannot read {p} with {library}: {exc}{hint}") from None
    file_axes, index = _axes_from_dims(p, order, shape)
    data = data[index]
    final, guessed = _choose_axes(p, tuple(data.shape), file_axes, axes, guess)
    if lazy is None:
        lazy = data.nbytes > LAZY_THRESHOLD
    if not (lazy and dask):
        try:
            data = np.asarray(data)
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 -- readers raise many kinds: one line naming the file
            raise SelfDenoiseError(f"cannot read {p} with {library}: {exc}") from None
    scale: dict[str, float] = {}
    units: dict[str, str] = {}
    for axis in "ZYX":
        value = getattr(sizes, axis, None) if sizes is not None else None
        if axis in final and value is not None and float(value) > 0:
            scale[axis] = float(value)
            unit = getattr(getattr(properties, axis, None), "unit", None)
            # pint units print as 'micrometer'; without units the libraries report micrometres
            units[axis] = short_unit(str(unit)) if unit is not None else "µm"
    return ImageData(data, final, scale, units, str(p), guessed)


def _axes_from_dims(p: Path, order: str, shape: tuple[int, ...]) -> tuple[str, tuple]:
    """Our axes for the reader's dims, and the index that drops its length-1 dimensions."""
    axes, index = "", []
    for dim, size in zip(order.upper(), shape):
        if dim in "YX" or (dim in "TCZS" and size > 1):
            axes += "C" if dim == "S" else dim  # S is RGB(A) samples: colour channels
            index.append(slice(None))
        elif size == 1:
            index.append(0)
        else:
            raise SelfDenoiseError(
                f"{p.name} has a dimension {dim!r} of size {size} (mosaic tiles?); export it as "
                "one image per tile or stitched, e.g. to OME-TIFF"
            )
    if axes.count("C") > 1:
        raise SelfDenoiseError(
            f"{p.name} has both channels and RGB samples (dims {order}, shape {shape}); "
            "export one of them, e.g. to OME-TIFF"
        )
    return axes, tuple(index)


# ----------------------------------------------------------------------------------- writing


def write_image(path, data, axes: str, scale=None, units=None) -> Path:
    """Write ``data`` atomically as OME-TIFF (.tif/.tiff) or .npy; returns the path written.

    The file appears under its final name only once complete (``atomic.atomic_write``); an output the
    disk cannot hold is refused before anything is written.
    """
    p = Path(path)
    if not p.parent.is_dir():
        raise SelfDenoiseError(f"cannot write {p}: the folder {p.parent} does not exist")
    data = np.asarray(data)
    axes = validate_axes(axes, data.shape)
    name = p.name.lower()
    if not name.endswith(TIFF_SUFFIXES + (".npy",)):
        raise SelfDenoiseError(f"cannot write {p}: unsupported file type; use .tif, .tiff, .ome.tif, .ome.tiff "
                               "or .npy (selfdenoise predict also writes .ome.zarr)")
    check_free_space(p, data.nbytes)  # both formats are uncompressed
    with atomic_write(p) as tmp:  # a failed or cancelled write leaves nothing behind
        if name.endswith(".npy"):
            with open(tmp, "wb") as fh:  # a file handle stops np.save from appending '.npy'
                np.save(fh, data, allow_pickle=False)
        else:
            _write_ome(tmp, data, axes, scale or {}, units or {})
    return p


def _write_ome(tmp: Path, data: np.ndarray, axes: str, scale: dict, units: dict) -> None:
    data, axes = ome_order(data, axes)
    # minisblack: never let tifffile guess RGB from a C axis of length 3 or 4
    tifffile.imwrite(tmp, data, ome=True, photometric="minisblack", metadata=ome_tiff_metadata(axes, scale, units))
