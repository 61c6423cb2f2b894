"""Whole user jobs (train then denoise, calibrate a classic denoiser, apply a model) as generators.

A job yields messages and returns a ``JobResult``. The napari widgets run a job in a worker thread and
turn each message into a plot point, a progress bar value or a preview layer on the main thread; the
job itself knows nothing of Qt or napari, so the tests drive it directly.

Messages: ``training.ProgressEvent`` (one per step), ``Preview`` (the denoised preview crop, every few
seconds of training) and ``Stage`` (progress of prediction or calibration). ``auto_job`` (method "auto")
adds the live score table to every event (``event.extra["scores"]``, see ``Denoiser``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .data.axes import make_layout
from .data.lazy import LAZY_THRESHOLD, is_lazy, nbytes
from .denoiser import Denoiser
from .errors import SelfDenoiseError
from .predict.predictor import Predictor
from .steps import Stage, staged

PREVIEW_SIZE = 256  # preview crop edge in Y and X: cheap enough to predict every few seconds on a CPU
PREVIEW_FIRST = 1.0  # seconds of training before the first preview
PREVIEW_EVERY = 3.0  # seconds of training between previews


@dataclass
class Preview:
    outputs: dict[str, np.ndarray]  # each shaped like image[region]
    region: tuple[slice, ...]  # where the crop sits in the full image
    step: int


@dataclass
class JobResult:
    outputs: dict[str, np.ndarray]  # "denoised" (+ e.g. "noise_std"), each shaped like the input
    stopped: bool = False  # training was ended early by the user (the outputs use the best weights)
    extra: dict = field(default_factory=dict)  # e.g. the classic calibration result


def preview_region(shape: Sequence[int], axes: str, position: Sequence[float] | None = None,
                   size: int | None = None, depth: int = 16) -> tuple[slice, ...]:
    """A crop around ``position`` (an index per axis; the centre by default) for a live preview.

    One sample (S/T), all channels, a slab of ``depth`` planes in Z (the network needs the context)
    and up to ``size`` x ``size`` (default ``PREVIEW_SIZE``) pixels in Y and X.
    """
    layout = make_layout(shape, axes)
    size = size or PREVIEW_SIZE
    position = [s // 2 for s in shape] if position is None else position
    region = []
    for axis, length, centre in zip(layout.axes, shape, position):
        centre = int(np.clip(round(float(centre)), 0, length - 1))
        if axis in "ST":
            region.append(slice(centre, centre + 1))
        elif axis == "C":
            region.append(slice(0, length))
        else:
            extent = min(length, depth if axis == "Z" else size)
            start = int(np.clip(centre - extent // 2, 0, length - extent))
            region.append(slice(start, start + extent))
    return tuple(region)


def box_regions(boxes: Sequence[np.ndarray], shape: Sequence[int], axes: str, minimum: int = 8) -> list[tuple]:
    """Training regions from boxes drawn on the image: each box is an array of corner points in the
    image's index space, either (y, x) pairs or one coordinate per axis. Its Y/X extent becomes a crop;
    every other axis is kept whole."""
    layout = make_layout(shape, axes)
    regions = []
    for number, box in enumerate(boxes, start=1):
        points = np.asarray(box, dtype=float)
        columns = {"Y": 0, "X": 1} if points.shape[1] == 2 else {a: layout.axes.index(a) for a in "YX"}
        region = [slice(0, length) for length in shape]
        for axis, column in columns.items():
            dim, length = layout.axes.index(axis), shape[layout.axes.index(axis)]
            low = int(np.clip(np.floor(points[:, column].min()), 0, length))
            high = int(np.clip(np.ceil(points[:, column].max()), 0, length))
            if high - low < minimum:
                raise SelfDenoiseError(
                    f"training region {number} is only {max(high - low, 0)} pixels along {axis} inside the "
                    f"image; draw it at least {minimum} pixels wide, over the image"
                )
            region[dim] = slice(low, high)
        regions.append(tuple(region))
    return regions


def train_job(denoiser: Denoiser, image: np.ndarray, regions: Sequence[tuple] | None = None,
              preview: tuple[slice, ...] | None = None, tta: bool = False):
    """Train on ``image`` (or only on its ``regions``), previewing ``preview`` every few seconds of training,
    then denoise the whole image with the best weights. Stopping the denoiser ends training early and
    still denoises."""
    data = [image[r] for r in regions] if regions else image
    next_preview, last = PREVIEW_FIRST, None
    for event in denoiser.train(data):
        last = event
        yield event
        if preview is not None and not event.done and "stage" not in event.extra and "classic" not in event.extra \
                and event.elapsed >= next_preview:
            outputs = yield from staged("previewing", denoiser.predict_steps(image[preview]))
            yield Preview(outputs, preview, event.step)
            next_preview = event.elapsed + PREVIEW_EVERY
    outputs = yield from staged("predicting", predict_any_size(denoiser, image, tta=tta))
    return JobResult(outputs, stopped=bool(last is not None and last.stopped))


def auto_job(denoiser: Denoiser, image: np.ndarray, regions: Sequence[tuple] | None = None,
             preview: tuple[slice, ...] | None = None, tta: bool = False):
    """``train_job`` for method "auto" (``Denoiser()`` or ``Denoiser("auto", ...)``): race the candidates
    (``core.training.auto``) and denoise the whole image with the winner.

    Messages, in order:
    - the first ``ProgressEvent`` (step 0, seconds after the start) has ``extra["classic"]`` (the
      ``classic.CalibrationResult``) and ``extra["classic_options"]`` ({denoiser, parameter_name, parameter,
      normalization, blind_radius}); with ``preview`` a ``Preview`` of the classical filter follows at once;
    - then one ``ProgressEvent`` per training step of the candidate in ``extra["candidate"]`` ("n2s", ...),
      ``step``/``max_steps`` counted over all candidates (the planned race), ``elapsed`` the race's time;
      ``Preview``s of the candidate training now, every few seconds;
    - every event has ``extra["scores"]``: the live table, a list of dicts {method, score, stderr, steps,
      status ("running", "dropped", "winner"), elapsed}, the classic filter first; score is the masked-pixel
      loss on the held-out pixels (squared image units, lower is better; None until first scored);
    - the last event (``done``) has ``extra["auto"]``: the ``auto.AutoResult`` (winner, scores, estimate:
      a ``QualityEstimate`` with ``reliable``, ``psnr``, ``psnr_low``/``psnr_high``, ``text()``).
    The ``JobResult`` holds the winner's outputs and ``extra["auto"]`` (also ``denoiser.auto``, and in the
    saved model file); ``denoiser.stop()`` ends the race early (the best candidate so far wins).
    """
    from .data.normalize import Normalization
    from .methods.classic import denoise_classic

    steps = train_job(denoiser, image, regions, preview, tta)
    while True:
        try:
            message = next(steps)
        except StopIteration as end:
            result = end.value
            break
        yield message
        chosen = getattr(message, "extra", {}).get("classic_options")
        if chosen is not None and preview is not None:
            crop = np.asarray(image[preview])
            yield Stage("previewing", 0, 1)
            denoised = denoise_classic(crop, denoiser.config.axes, chosen["denoiser"], chosen["parameter"],
                                       Normalization.from_dict(chosen["normalization"]))
            yield Preview({"denoised": denoised}, preview, 0)
    result.extra["auto"] = denoiser.auto
    return result


def classic_job(image: np.ndarray, axes: str, denoisers: Sequence[str] | None = None, blind_radius: int = 0):
    """Calibrate the classic denoisers with the self-supervised loss, then apply the winner."""
    from .methods.classic import DEFAULT_DENOISERS, calibration_steps, denoise_classic
    from .noise import noise_curve

    image = np.asarray(image)  # the classic filters work in memory
    result = yield from staged("calibrating", calibration_steps(image, axes, denoisers or DEFAULT_DENOISERS,
                                                                    blind_radius=blind_radius))
    yield Stage("denoising", 0, 1)
    denoised = denoise_classic(image, axes, result.denoiser, result.parameter)
    return JobResult({"denoised": denoised},
                     extra={"calibration": result, "noise_curve": noise_curve(image, denoised)})


def predict_job(denoiser: Predictor, image: np.ndarray, axes: str | None = None, tta: bool = False,
                tile: int | None = None):
    """Apply a trained model (ours or a foreign bioimage.io one) to a whole image."""
    outputs = yield from staged("predicting", predict_any_size(denoiser, image, axes, tta=tta, tile=tile))
    return JobResult(outputs)


def predict_any_size(denoiser: Predictor, image, axes: str | None = None, **options):
    """``predict_steps``, except for a lazy image too big to hold (a dask/zarr napari layer): that is
    streamed block by block into OME-Zarr files in a scratch folder (removed at exit), and the
    outputs come back as dask arrays over them, so a result layer reads only what is shown."""
    if not (is_lazy(image) and nbytes(image) > LAZY_THRESHOLD):
        return (yield from denoiser.predict_steps(image, axes, **options))
    import atexit
    import shutil
    import tempfile
    from pathlib import Path

    import dask.array as da

    from .predict.streaming import output_axes

    axes = axes or denoiser.axes
    folder = Path(tempfile.mkdtemp(prefix="selfdenoise-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    targets = {name: folder / f"{name}.ome.zarr" for name in denoiser.outputs}
    yield from denoiser.predict_to_steps(image, targets, axes, **options)
    stored = output_axes(axes, zarr=True)
    return {name: da.from_zarr(str(path / "0")).transpose([stored.index(a) for a in axes])
            for name, path in targets.items()}
