"""napari layers <-> engine arrays: axes, placement and new-layer keyword arguments (no Qt here).

The widgets use these so that every result layer sits exactly on its source layer (scale, translate,
axis labels, units) and the source layer itself is never modified.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .core.data.axes import default_axes
from .core.data.checks import check_shape
from .core.errors import SelfDenoiseError

_AXES = set("STCZYX")


def layer_axes(layer) -> str:
    """The layer's axes: from our reader's metadata, then its axis labels, then a guess by dimension."""
    ndim = layer.data.ndim
    for candidate in ((layer.metadata or {}).get("axes"), "".join(map(str, layer.axis_labels)).upper()):
        if candidate and len(candidate) == ndim and set(candidate) <= _AXES and len(set(candidate)) == ndim:
            return candidate
    if getattr(layer, "rgb", False):
        return default_axes(ndim - 1) + "C"
    return default_axes(ndim)


def guessed_axes(layer) -> str:
    """``layer_axes``, or "" when there is no guess (e.g. a 6D layer): the user then types them and
    ``check_layer`` says so."""
    try:
        return layer_axes(layer)
    except SelfDenoiseError:
        return ""


def check_layer(layer, axes: str):
    """A clear message for layers the engine cannot train on (before any work starts); returns the
    ``Layout`` of ``layer`` with ``axes``."""
    if layer is None:
        raise SelfDenoiseError("choose an image layer first (open an image or load the sample data)")
    if layer.__class__.__name__ != "Image":
        raise SelfDenoiseError(f"{layer.name!r} is a {layer.__class__.__name__} layer; choose an image layer")
    if getattr(layer, "multiscale", False):
        raise SelfDenoiseError(f"{layer.name!r} is multiscale; open its full-resolution level as a layer")
    if not axes.strip():
        ndim = layer.data.ndim
        example = "STCZYX"[-ndim:] if ndim <= 6 else "one letter of S T C Z Y X per dimension"
        raise SelfDenoiseError(f"cannot guess the axes of {layer.name!r}, a {ndim}-dimensional image; type "
                               f"one letter per dimension (e.g. {example})")
    return check_shape(layer.data.shape, layer.data.dtype, axes, repr(layer.name))


def network_note(layout) -> str:
    """Which network the axes mean: "a 2D network on Y, X; 20 T frames as samples" (what users ask)."""
    spatial = "Z, Y, X" if layout.is_3d else "Y, X"
    note = f"a {'3D' if layout.is_3d else '2D'} network on {spatial}"
    samples = [f"{layout.shape[layout.axes.index(a)]} {a}" for a in layout.axes if a in "ST"]
    if samples:
        note += f"; {' x '.join(samples)} as samples"
    if layout.channels > 1:
        note += f"; {layout.channels} channels"
    return note


def placement(layer, region: tuple[slice, ...] | None = None) -> dict:
    """Keyword arguments that put a new layer on ``layer`` (optionally on a crop of it)."""
    scale = np.asarray(layer.scale, dtype=float)
    translate = np.asarray(layer.translate, dtype=float)
    if region is not None:
        translate = translate + np.array([s.start or 0 for s in region]) * scale
    return {"scale": tuple(scale), "translate": tuple(translate), "axis_labels": tuple(layer.axis_labels),
            "units": tuple(str(u) for u in layer.units)}


def result_layer_kwargs(source, output: str, method: str, axes: str, label: str | None = None) -> dict:
    """Name, placement, display and metadata for one output of a run on ``source``. The name shows
    ``label`` (default: the method) in brackets, e.g. "n2s, 2000 steps, 0:01:32" to tell results apart."""
    label = label or method
    names = {"denoised": f"{source.name} denoised ({label})", "noise_std": f"{source.name} noise std ({label})"}
    kwargs = {"name": names.get(output, f"{source.name} {output} ({label})"), **placement(source),
              "metadata": {"axes": axes, "source": source.name, "method": method, "output": output}}
    if output == "denoised":
        kwargs.update(colormap=source.colormap.name, contrast_limits=tuple(source.contrast_limits),
                      rgb=bool(getattr(source, "rgb", False)))
    else:
        kwargs.update(colormap="magma")
    return kwargs


def beside_source(layer, filename: str) -> str:
    """Where a save dialog starts: ``filename`` in the folder of the file ``layer`` was read from (where
    the user keeps that data), else the bare name (the dialog's own folder)."""
    path = getattr(getattr(layer, "source", None), "path", None) if layer is not None else None
    return str(Path(path).parent / filename) if path else filename


def view_position(layer, viewer) -> list[float]:
    """Where the user is looking, in the layer's index space: the current slice, and the camera centre
    in the displayed dimensions."""
    point = list(viewer.dims.point)
    scene = getattr(viewer, "scene", None)  # napari >= 0.9 moved the camera to viewer.scene
    camera = scene.camera if scene is not None else viewer.camera
    for dim, value in zip(viewer.dims.displayed, camera.center[-len(viewer.dims.displayed):]):
        point[dim] = value
    position = layer.world_to_data(point[-layer.ndim:])
    return [float(p) for p in position]


def shape_boxes(shapes, image, axes: str) -> list[np.ndarray]:
    """The shapes' vertices as (y, x) points in ``image``'s index space (what training regions need)."""
    y, x = axes.index("Y"), axes.index("X")
    boxes = []
    for vertices in shapes.data:
        vertices = np.asarray(vertices, float)
        world = vertices * np.asarray(shapes.scale)[-vertices.shape[1]:] + np.asarray(shapes.translate)[-vertices.shape[1]:]
        world_yx = world[:, -2:]  # the shapes layer's last two axes are the displayed Y and X
        origin = np.asarray(image.translate, float)[[y, x]]
        boxes.append((world_yx - origin) / np.asarray(image.scale, float)[[y, x]])
    return boxes
