"""What a description says about its tensors: axes and sizes (0.4 and 0.5), and the pre/post-processing
steps (checked when read, applied with numpy)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from ..config import is_finite_number as _is_number
from ..errors import SelfDenoiseError

# Axis types of a 0.5 description and letters of a 0.4 one -> ours (batch handled apart).
_AXIS_LETTERS = {"b": "B", "c": "C", "z": "Z", "y": "Y", "x": "X", "t": "T", "i": "I"}


class _Axis(SimpleNamespace):
    """One tensor axis: ``letter`` (B, C, Z, Y, X; T or I for the unsupported time and index axes),
    ``id`` (as in the description), ``size`` (int, or (min, step), or (tensor, axis) reference)."""


def parse_axes(tensor: dict, version: tuple, shape_key: str = "shape") -> list[_Axis]:
    axes = tensor.get("axes")
    if version[:2] == (0, 4):
        if not isinstance(axes, str):
            raise ValueError("axes must be a string such as 'bcyx'")
        shape = tensor.get(shape_key)
        result = []
        for index, letter in enumerate(axes.lower()):
            if letter not in _AXIS_LETTERS:
                raise ValueError(f"unknown axis {letter!r}")
            if isinstance(shape, list):
                size = int(shape[index])
            elif isinstance(shape, dict) and "min" in shape:
                size = (int(shape["min"][index]), int(shape["step"][index]))
                if size[1] == 0:
                    size = size[0]
                elif letter == "c":
                    size = None  # any number of channels
            elif isinstance(shape, dict) and "reference_tensor" in shape:
                scale = float(shape.get("scale", [1] * len(axes))[index])
                offset = float(shape.get("offset", [0] * len(axes))[index])
                size = ("ref", shape["reference_tensor"], letter, scale, offset)
            else:
                raise ValueError("shape is missing or not understood")
            halo = tensor.get("halo")
            result.append(_Axis(letter=_AXIS_LETTERS[letter], id=letter, size=size,
                                halo=int(halo[index]) if isinstance(halo, list) else 0, channels=None))
        return checked_sizes(result)
    if not isinstance(axes, list) or not axes:
        raise ValueError("axes must be a list of axis descriptions")
    result = []
    for axis in axes:
        if not isinstance(axis, dict) or "type" not in axis:
            raise ValueError("each axis needs a type")
        kind = axis["type"]
        if kind == "batch":
            result.append(_Axis(letter="B", id="batch", size=None, halo=0, channels=None))
            continue
        if kind == "channel":
            names = axis.get("channel_names") or []
            result.append(_Axis(letter="C", id="channel", size=len(names), halo=0, channels=len(names)))
            continue
        axis_id = str(axis.get("id") or {"time": "t", "index": "i"}.get(kind, kind))
        letter = {"space": axis_id.upper(), "time": "T", "index": "I"}.get(kind, "?")
        if letter not in "ZYXTI":
            raise ValueError(f"axis {axis_id!r} of type {kind!r} is not understood")
        size = axis.get("size")
        if isinstance(size, int):
            parsed = size
        elif isinstance(size, dict) and "min" in size:
            parsed = (int(size["min"]), int(size.get("step", 0)))
        elif isinstance(size, dict) and "tensor_id" in size:
            parsed = ("ref", size["tensor_id"], size.get("axis_id", axis_id), 1.0, float(size.get("offset", 0)))
        else:
            raise ValueError(f"the size of axis {axis_id!r} is missing or not understood")
        result.append(_Axis(letter=letter, id=axis_id, size=parsed, halo=int(axis.get("halo", 0) or 0),
                            channels=None))
    return checked_sizes(result)


# The largest edge a description may give a spatial axis (a fixed size or a minimum): tiles are built from
# these, so they must not ask for gigabytes (see also ForeignModel.MAX_TILE_PIXELS).
MAX_AXIS_SIZE = 2**16


def checked_sizes(axes: list[_Axis]) -> list[_Axis]:
    """Refuse spatial sizes that are not whole numbers in range (``min: 0, step: 0``, a negative step, a
    size of a billion) and negative halos; raises ``ValueError``, which the caller words for the user."""
    for axis in axes:
        if isinstance(axis.size, bool) or (isinstance(axis.size, tuple) and any(isinstance(v, bool) for v in axis.size)):
            raise ValueError(f"the size of axis {axis.id!r} is true/false, not a number of pixels")
        if not 0 <= axis.halo <= MAX_AXIS_SIZE:
            raise ValueError(f"the halo of axis {axis.id!r} must be from 0 to {MAX_AXIS_SIZE}, not {axis.halo}")
        if axis.letter not in "ZYX":
            continue
        size = axis.size
        if isinstance(size, int):
            fixed = [size]
        elif isinstance(size, tuple) and size[0] == "ref":
            if not (np.isfinite(size[3]) and size[3] > 0 and np.isfinite(size[4]) and abs(size[4]) <= MAX_AXIS_SIZE):
                raise ValueError(f"the size of axis {axis.id!r} refers to another tensor with a bad scale or offset")
            continue
        else:
            fixed = [size[0]]
            if not 0 <= size[1] <= MAX_AXIS_SIZE:
                raise ValueError(f"the size step of axis {axis.id!r} must be from 0 to {MAX_AXIS_SIZE}, not {size[1]}")
        if not all(1 <= value <= MAX_AXIS_SIZE for value in fixed):
            raise ValueError(f"the size of axis {axis.id!r} must be from 1 to {MAX_AXIS_SIZE} pixels, not {fixed[0]}")
    return axes


_DTYPES = {"float32", "float64", "float16", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64",
           "int64", "bool"}


def _numbers(value) -> bool:
    """One finite number, or a non-empty list of them (per-channel parameters)."""
    if isinstance(value, list):
        return 0 < len(value) <= 4096 and all(_is_number(v) for v in value)
    return _is_number(value)


def step_problem(name: str, kwargs: dict) -> str | None:
    """What is wrong with a processing step's arguments (named, as the message's end), or None."""
    axes = kwargs.get("axes", kwargs.get("axis"))
    if axes is not None and not (isinstance(axes, str) or (isinstance(axes, list)
                                                           and all(isinstance(a, str) for a in axes))):
        return "axes that are not axis names"
    if "eps" in kwargs and not (_is_number(kwargs["eps"]) and 0 < kwargs["eps"] <= 1):
        return f"an eps of {str(kwargs['eps'])[:40]} (give a small positive number)"
    if name == "ensure_dtype" and str(kwargs.get("dtype", "float32")) not in _DTYPES:
        return f"the unknown dtype {str(kwargs.get('dtype'))[:40]!r}"
    numeric = {"scale_linear": ("gain", "offset"), "binarize": ("threshold",), "clip": ("min", "max"),
               "scale_range": ("min_percentile", "max_percentile"),
               "fixed_zero_mean_unit_variance": ("mean", "std")}.get(name, ())
    if name == "zero_mean_unit_variance" and kwargs.get("mode") == "fixed":
        numeric = ("mean", "std")
    for key in numeric:
        required = key in ("mean", "std")
        if key not in kwargs and required:
            return f"no {key}"
        if key in kwargs and not _numbers(kwargs[key]):
            return f"a {key} of {str(kwargs[key])[:40]!r} (give a number or a list of numbers)"
    if name == "scale_range":
        low, high = kwargs.get("min_percentile", 0), kwargs.get("max_percentile", 100)
        if not (_is_number(low) and _is_number(high) and 0 <= low < high <= 100):
            return f"percentiles {low!r} and {high!r} (give 0 <= min_percentile < max_percentile <= 100)"
    if name == "clip" and _is_number(kwargs.get("min")) and _is_number(kwargs.get("max")) \
            and kwargs["min"] > kwargs["max"]:
        return "a min above its max"
    if name in ("fixed_zero_mean_unit_variance", "zero_mean_unit_variance") and "std" in kwargs and \
            any(v < 0 for v in np.atleast_1d(kwargs["std"])):
        return "a negative std"
    return None


def _reduce_axes(kwargs, axes, x) -> tuple[int, ...] | None:
    """The array axes a statistic is taken over: those named in ``axes`` (0.4: letters; 0.5: ids), or all."""
    named = kwargs.get("axes")
    if named is None:
        return None
    names = list(named) if isinstance(named, str) else [str(a) for a in named]
    index = {a.id: i for i, a in enumerate(axes)}
    index.update({a.letter.lower(): i for i, a in enumerate(axes)})
    return tuple(index[n] for n in names if n in index)


def _along(values, kwargs, axes, x):
    """Per-channel (or per-axis) parameters broadcast against ``x``."""
    values = np.asarray(values, np.float32)
    if values.ndim == 0 or values.size == 1:
        return values.reshape(()) if values.size == 1 else values
    axis_id = kwargs.get("axis")
    position = None
    if axis_id is not None:
        position = next((i for i, a in enumerate(axes) if a.id == axis_id or a.letter.lower() == str(axis_id)), None)
    if position is None:
        position = next((i for i, a in enumerate(axes) if a.letter == "C"), None)
    if position is None or x.shape[position] != values.size:
        raise SelfDenoiseError(f"a processing step has {values.size} values, which do not fit the image's axes")
    shape = [1] * x.ndim
    shape[position] = values.size
    return values.reshape(shape)


def apply_step(name, kwargs, x, axes, version):
    eps = float(kwargs.get("eps", 1e-6))
    if name == "ensure_dtype":
        return x.astype(np.dtype(str(kwargs.get("dtype", "float32"))), copy=False).astype(np.float32)
    if name == "scale_linear":
        return x * _along(kwargs.get("gain", 1.0), kwargs, axes, x) + _along(kwargs.get("offset", 0.0), kwargs, axes, x)
    if name == "fixed_zero_mean_unit_variance" or (name == "zero_mean_unit_variance" and kwargs.get("mode") == "fixed"):
        mean, std = _along(kwargs["mean"], kwargs, axes, x), _along(kwargs["std"], kwargs, axes, x)
        return (x - mean) / (std + eps)
    if name == "zero_mean_unit_variance":
        reduce = _reduce_axes(kwargs, axes, x)
        return (x - x.mean(axis=reduce, keepdims=True)) / (x.std(axis=reduce, keepdims=True) + eps)
    if name == "scale_range":
        reduce = _reduce_axes(kwargs, axes, x)
        low_p, high_p = float(kwargs.get("min_percentile", 0)), float(kwargs.get("max_percentile", 100))
        low = np.percentile(x, low_p, axis=reduce, keepdims=True)
        high = np.percentile(x, high_p, axis=reduce, keepdims=True)
        return (x - low) / (high - low + eps)
    if name == "clip":
        return np.clip(x, kwargs.get("min"), kwargs.get("max"))
    if name == "sigmoid":
        return 1 / (1 + np.exp(-x))
    if name == "binarize":
        return (x > _along(kwargs.get("threshold", 0.5), kwargs, axes, x)).astype(np.float32)
    raise SelfDenoiseError(f"processing step {name!r} is not supported")
