"""What every command shares: the program's name, printing, reading an input, checking a method or device.

Light to import (no torch): the engine is imported inside the functions that need it.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from ..core.errors import SelfDenoiseError

PROG = "selfdenoise"
EXIT_ERROR = 2
IMAGE_SUFFIXES = (".tif", ".tiff", ".npy")


def say(*args) -> None:
    print(*args, flush=True)


def hint_blind_radius(image, flag: str) -> None:
    """Tell the user (stderr) when the noise looks shared by neighbouring pixels and how to set the option."""
    from ..core.methods.blind_radius import shared_noise_hint

    hint = shared_noise_hint(image.data, image.axes)
    if hint:
        print(f"{PROG}: hint: {hint} ({flag}).", file=sys.stderr, flush=True)


def duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def loss_text(value) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4g}"


def check_device(name: str):
    from ..core.nn.device import resolve_device

    return resolve_device(name)


def check_method(name: str, auto: bool = False) -> str:
    from ..core.methods import CLASSIC, method_names
    from ..core.training.auto import AUTO

    names = ([AUTO] if auto else []) + method_names(include_classic=False)
    if name not in names:
        hint = " (the classic baseline is 'selfdenoise calibrate')" if name == CLASSIC else ""
        raise SelfDenoiseError(f"unknown method {name!r}{hint}; choose one of: {', '.join(names)}")
    return name


def parse_options(pairs: list[str]) -> dict:
    """``--option KEY=VALUE`` pairs as a dict; values are JSON when they parse as JSON, else strings."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SelfDenoiseError(f"--option {pair!r} must look like KEY=VALUE, e.g. mask_fraction=0.01")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def read(path, axes: str | None, fallback_axes: str | None = None, lazy: bool | None = None,
         dask: bool = False):
    """Read an image: ``axes`` if given, else the file's metadata, else ``fallback_axes``."""
    from functools import partial

    from ..core.io.images import read_image

    read_image = partial(read_image, dask=dask)

    if axes:
        return read_image(path, axes=axes, lazy=lazy)
    if fallback_axes and str(path).lower().endswith(".npy"):
        # .npy files carry no axes: the model's, when the dimensions match
        import numpy as np

        if not Path(path).is_file():
            return read_image(path, lazy=lazy)  # the usual "file not found" message
        try:
            ndim = np.load(path, mmap_mode="r", allow_pickle=False).ndim
        except Exception:  # noqa: BLE001 -- let read_image say what is wrong with the file
            ndim = None
        return read_image(path, axes=fallback_axes if ndim == len(fallback_axes) else None, lazy=lazy)
    try:
        return read_image(path, lazy=lazy)
    except SelfDenoiseError:
        if not fallback_axes:
            raise
        try:
            return read_image(path, axes=fallback_axes, lazy=lazy)
        except SelfDenoiseError:
            pass
        raise


def check_input(image, name: str):
    from ..core.data.checks import check_image

    return check_image(image.data, image.axes, name)


def write_json(path: Path, data) -> None:
    from ..core.io.atomic import atomic_write

    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def load_ours(path, trust_code: bool, what: str):
    """A model for train --from and export: foreign TorchScript is refused as foreign (trust would not help)."""
    from ..core.denoiser import Denoiser
    from ..core.errors import UntrustedCodeError

    try:
        return Denoiser.load(path, trust_code=trust_code)
    except UntrustedCodeError:
        raise SelfDenoiseError(f"{path} is a foreign bioimage.io model (prediction only); only models trained "
                               f"with napari-selfdenoise can be {what}") from None
