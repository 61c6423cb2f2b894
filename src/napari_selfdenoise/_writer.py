"""napari writer: an image layer to OME-TIFF, keeping its axes and scale (thin adapter over core.io)."""

from __future__ import annotations


def write_image_layer(path: str, data, meta: dict) -> list[str]:
    import numpy as np

    from .core.axes import default_axes
    from .core.io import write_image

    data = np.asarray(data)
    axes = (meta.get("metadata") or {}).get("axes")
    if not axes or len(axes) != data.ndim:
        labels = tuple(meta.get("axis_labels") or ())
        axes = "".join(labels).upper() if len(labels) == data.ndim and set("".join(labels).upper()) <= set("STCZYX") \
            else default_axes(data.ndim)
    scale = meta.get("scale")
    units = meta.get("units")
    scale_map = {a: float(s) for a, s in zip(axes, scale)} if scale is not None else None
    unit_map = {a: str(u) for a, u in zip(axes, units)} if units is not None else None
    written = write_image(path, data, axes, scale=scale_map, units=unit_map)
    return [str(written)]
