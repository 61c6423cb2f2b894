"""napari reader: TIFF/OME-TIFF, zarr/OME-Zarr (zarr installed) and, with the [io] extra, CZI, ND2, LIF,
DV, with axis labels, scale, units and the axes string (a thin adapter over core.io.images.read_image)."""

from __future__ import annotations

from pathlib import Path


def get_reader(path):
    from .core.io.images import OTHER_SUFFIXES, TIFF_SUFFIXES, other_formats_library
    from .core.io.zarr_images import is_zarr_store

    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    p = Path(path)
    name = p.name.lower()
    if name.endswith(TIFF_SUFFIXES) and not p.is_dir():
        return read_layers
    if is_zarr_store(p):  # read lazily with zarr itself (the [distributed] extra)
        return read_layers
    # only claim other formats when a library can read them, so napari can offer another reader
    if name.endswith(OTHER_SUFFIXES) and other_formats_library() is not None:
        return read_layers
    return None


def read_layers(path):
    """One image layer; big files (over core.data.lazy.LAZY_THRESHOLD) come memory-mapped or as dask."""
    from .core.io.images import read_image
    from .core.io.outputs import image_stem

    path = path[0] if isinstance(path, list) else path
    # Unknown axes (e.g. a bare 3-D TIFF) are guessed from the dimension count, as napari itself
    # would; metadata["axes_guessed"] tells the widgets, which let the user correct the guess.
    image = read_image(path, guess_axes=True, dask=True)
    scale, units = dict(image.scale), dict(image.units)
    if "T" in image.axes and "T" not in scale:
        interval = _frame_interval(path)
        if interval is not None:
            scale["T"], units["T"] = interval
    kwargs = {
        "name": image_stem(Path(path)).removesuffix(".ome"),  # 'a.ome.zarr' -> 'a'; TIFFs: image_stem did it
        "axis_labels": tuple(image.axes),
        "scale": tuple(scale.get(a, 1.0) for a in image.axes),
        "units": tuple(_napari_unit(units.get(a), "[time]" if a == "T" else "[length]") for a in image.axes),
        "rgb": False,  # a C axis of length 3 stays an axis (napari would otherwise guess RGB)
        "metadata": {"axes": image.axes, "path": str(path), "axes_guessed": image.axes_guessed},
    }
    return [(image.data, kwargs, "image")]


def _napari_unit(unit: str | None, dimension: str = "[length]") -> str:
    """A unit napari (pint) understands, or 'pixel': a strange unit string must not stop the
    image from opening."""
    if not unit:
        return "pixel"
    try:
        import pint

        parsed = pint.get_application_registry().parse_expression(unit)
        return unit if parsed.check(dimension) else "pixel"
    except Exception:  # noqa: BLE001 -- pint raises many kinds on unknown units: then it is a pixel
        return "pixel"


def _frame_interval(path) -> tuple[float, str] | None:
    """A TIFF's time between frames (ImageJ ``finterval``/``tunit``, OME ``TimeIncrement``): without it
    napari gives T the unit "pixel" and warns "Inconsistent units" beside layers with a time axis."""
    from .core.io.images import TIFF_SUFFIXES

    if not str(path).lower().endswith(TIFF_SUFFIXES):
        return None
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            if tif.is_ome and tif.ome_metadata:
                import xml.etree.ElementTree as ET

                pixels = next(e for e in ET.fromstring(tif.ome_metadata).iter() if e.tag.endswith("Pixels"))
                value, unit = pixels.attrib.get("TimeIncrement"), pixels.attrib.get("TimeIncrementUnit", "s")
            elif tif.is_imagej and tif.imagej_metadata:
                meta = tif.imagej_metadata
                value, unit = meta.get("finterval"), meta.get("tunit") or "s"
            else:
                return None
        unit = {"sec": "s", "second": "s", "seconds": "s", "min": "minute", "msec": "ms"}.get(str(unit), str(unit))
        return (float(value), unit) if value is not None and float(value) > 0 else None
    except Exception:  # noqa: BLE001 -- metadata is optional: a broken tag must not make the image unreadable
        return None
