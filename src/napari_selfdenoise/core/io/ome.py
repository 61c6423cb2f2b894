"""OME conventions shared by every writer and reader: axis order, our S axis, units.

One home for them: ``images.write_image`` and ``images.read_image`` (OME-TIFF, OME-Zarr) and the
streamed outputs of ``predict.streaming`` (OME-TIFF written in place, OME-Zarr) all use these.
"""

from __future__ import annotations

import numpy as np

# Our S (independent samples) has no OME dimension. We write it as tifffile's 'Q', an OME
# "ModuloAlong" axis of Type="other", tagged with this TypeDescription so read_image can tell
# our samples from a foreign, unknown 'Q' axis and map it back to S.
SAMPLES_MARKER = "samples"

# Units as people and libraries write them -> the short symbol we keep (and OME-TIFF stores).
_SHORT_UNITS = {
    "micron": "µm", "microns": "µm", "um": "µm", "μm": "µm", "\\u00b5m": "µm",
    # pint's long names (napari layers' units, bioio's dimension properties; OME-Zarr's units)
    "micrometer": "µm", "nanometer": "nm", "millimeter": "mm", "centimeter": "cm", "meter": "m",
    "angstrom": "Å",
}
# The short symbol -> the name OME-Zarr (NGFF) requires.
_NGFF_UNITS = {"µm": "micrometer", "nm": "nanometer", "mm": "millimeter", "cm": "centimeter", "m": "meter",
               "Å": "angstrom"}


def short_unit(unit: str) -> str:
    """The unit as we keep it: 'µm' for 'micron', 'um' or 'micrometer'; others unchanged (stripped)."""
    return _SHORT_UNITS.get(unit.strip().lower(), unit.strip())


def ngff_unit(unit: str) -> str:
    """The unit's name in OME-Zarr metadata ('micrometer' for 'µm')."""
    return _NGFF_UNITS.get(short_unit(unit), unit)


def ome_order(data: np.ndarray, axes: str) -> tuple[np.ndarray, str]:
    """Reorder axes to a layout OME-TIFF can store; the data keep their labels.

    OME needs Y, X last (any other axes keep their order before them). Our S is written as a
    modulo axis, which must follow a T/Z/C axis or take an unused one; with all of T, Z and C
    present and S not after one of them, S is moved to right after T. In those cases the file
    reads back with the same data and labels but a different axes order.
    """
    order = [a for a in axes if a not in "YX"] + ["Y", "X"]
    if "S" in order and all(a in order for a in "TZC"):
        i = order.index("S")
        if i == 0 or order[i - 1] not in "TZC":
            order.remove("S")
            order.insert(order.index("T") + 1, "S")
    new_axes = "".join(order)
    if new_axes == axes:
        return data, axes
    return np.transpose(data, [axes.index(a) for a in new_axes]), new_axes


def ome_tiff_metadata(axes: str, scale: dict | None, units: dict | None) -> dict:
    """tifffile's ``metadata`` for an OME-TIFF of ``axes`` (already in ``ome_order``): S as a tagged Q
    axis, the pixel sizes of X, Y and Z with their units."""
    scale, units = scale or {}, units or {}
    metadata: dict = {"axes": axes.replace("S", "Q")}
    if "S" in axes:
        metadata["TypeDescription"] = {"Q": SAMPLES_MARKER}
    for axis in "XYZ":
        if axis in axes and scale.get(axis):
            metadata[f"PhysicalSize{axis}"] = float(scale[axis])
            if units.get(axis):
                metadata[f"PhysicalSize{axis}Unit"] = short_unit(units[axis])
    return metadata
