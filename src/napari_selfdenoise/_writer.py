"""napari writer: an image layer to OME-TIFF, keeping its axes and scale (thin adapter over core.io.images)."""

from __future__ import annotations


def write_image_layer(path: str, data, meta: dict) -> list[str]:
    import numpy as np

    from .core.data.axes import default_axes
    from .core.io.images import write_image

    if meta.get("multiscale") and isinstance(data, (list, tuple)):
        data = data[0]  # the full-resolution level
    data = np.asarray(data)  # reads a memory-mapped or dask layer
    rgb = bool(meta.get("rgb")) and data.ndim >= 3  # the last dimension is colour, not a layer axis
    ndim = data.ndim - rgb
    axes = (meta.get("metadata") or {}).get("axes")
    if not isinstance(axes, str) or len(axes) != data.ndim:
        labels = "".join(str(a) for a in meta.get("axis_labels") or ()).upper()
        known = len(labels) == ndim and set(labels) <= set("STCZYX")
        axes = labels if known else default_axes(ndim)
        axes += "C" if rgb else ""
    scale = list(meta.get("scale") if meta.get("scale") is not None else [1.0] * ndim)
    units = list(meta.get("units") if meta.get("units") is not None else ["pixel"] * ndim)
    scale_map, unit_map = {}, {}
    for axis, s, u in zip(axes[:ndim], scale, units):
        unit = str(u)  # napari's units are pint units: 'micrometer' (core.io.images writes 'µm')
        if unit == "pixel" and float(s) == 1.0:
            continue  # napari's default: no calibration to store
        scale_map[axis] = float(s)
        unit_map[axis] = unit
    written = write_image(path, data, axes, scale=scale_map, units=unit_map)
    return [str(written)]
