"""``selfdenoise predict``: every input and output checked first, then each image denoised in memory,
streamed block by block (big inputs, .ome.zarr outputs) or on dask.distributed workers."""

from __future__ import annotations

import math
import time
from contextlib import ExitStack
from pathlib import Path

from ..core.errors import SelfDenoiseError
from ..core.io.outputs import is_zarr_path, output_folder, plan_outputs
from .common import IMAGE_SUFFIXES, check_device, check_input, duration, read, say
from .progress import TileProgress

_OUTPUT_SUFFIXES = IMAGE_SUFFIXES + (".zarr",)  # predict also streams into OME-Zarr


def cmd_predict(args) -> int:
    from ..core.data.axes import validate_axes
    from ..core.data.lazy import LAZY_THRESHOLD, nbytes
    from ..core.denoiser import Denoiser
    from ..core.io.atomic import check_free_space

    if args.axes:
        validate_axes(args.axes)
    if args.tile is not None and args.tile < 1:
        raise SelfDenoiseError("--tile must be a positive number of pixels")
    if args.batch_size is not None and args.batch_size < 1:
        raise SelfDenoiseError("--batch-size must be a positive integer")
    if args.workers is not None and args.dask_scheduler:
        raise SelfDenoiseError("give --workers (a local cluster) or --dask-scheduler (a running one), not both")
    if args.workers is not None and args.workers < 1:
        raise SelfDenoiseError("--workers must be a positive number of processes")
    distributed = args.workers is not None or bool(args.dask_scheduler)
    model = Denoiser.load(args.model, trust_code=args.trust_code)
    if distributed and not model.trainable:
        raise SelfDenoiseError(f"{args.model} is a foreign bioimage.io model; it runs in this process only "
                               "(leave out --workers and --dask-scheduler)")
    applied = _applied_method(model)
    name = f"model {Path(args.model).name} (method {applied})"
    if args.noise_std and "noise_std" not in model.outputs:
        raise SelfDenoiseError(f"{name} has no noise-std output; only nnet models do")
    check_device(args.device)

    # Check every input before denoising any (files are read again below, one at a time).
    n = len(args.inputs)
    streamed, sizes = [], []
    for path in args.inputs:
        image = read(path, args.axes, model.axes, lazy=True, dask=True)
        check_input(image, Path(path).name)
        model.check_axes(image.data.shape, image.axes)
        streamed.append(nbytes(image.data) > LAZY_THRESHOLD)  # too big to read whole: streamed
        sizes.append(math.prod(image.data.shape) * 4)  # float32 outputs shaped like the input
        del image
    extension = ".ome.zarr" if distributed else ".ome.tif"
    plan = {"extension": extension, "overwrite": args.overwrite, "also_read": [args.model],
            "suffixes": _OUTPUT_SUFFIXES}
    targets = plan_outputs(args.inputs, args.out, **plan)
    std_targets = plan_outputs(args.inputs, args.noise_std, suffix="_noise_std", **plan) if args.noise_std \
        else [None] * n
    clash = set(map(str, targets)) & set(map(str, filter(None, std_targets)))
    if clash:
        raise SelfDenoiseError(f"--out and --noise-std name the same file {min(clash)}")
    zarr = [is_zarr_path(t) or (s is not None and is_zarr_path(s)) for t, s in zip(targets, std_targets)]
    streamed = [big or into_zarr for big, into_zarr in zip(streamed, zarr)]
    if distributed and not all(is_zarr_path(t) for t in targets + std_targets if t is not None):
        raise SelfDenoiseError("--workers and --dask-scheduler write OME-Zarr: give outputs ending in .ome.zarr")
    for target, stream in zip(targets + std_targets, streamed + streamed):
        if target is not None and (stream or distributed) and target.name.lower().endswith(".npy"):
            raise SelfDenoiseError(f"{target}: big inputs are streamed into .ome.zarr or .ome.tif, not .npy")
    for target, size in zip(targets + std_targets, sizes + sizes):
        if target is not None and not is_zarr_path(target):  # OME-TIFF and .npy: uncompressed, size known
            check_free_space(target, size)

    started = time.perf_counter()
    with ExitStack() as folders:  # output folders are made now, and removed again if they stay empty
        for out in {t.parent for t in targets + std_targets if t is not None and not t.parent.exists()}:
            folders.enter_context(output_folder(out))
        if distributed:
            _predict_distributed(args, model, targets, std_targets)
        for index, (path, target, std_target) in enumerate(zip(args.inputs, targets, std_targets), start=1):
            if distributed:
                break
            label = f"[{index}/{n}] {Path(path).name}" if n > 1 else Path(path).name
            if streamed[index - 1]:
                _predict_streamed(args, model, path, target, std_target, label)
            else:
                _predict_in_memory(args, model, path, target, std_target, label)
            say(f"{path} -> {target}" + (f" and {std_target}" if std_target is not None else ""))
    say(f"denoised {n} image(s) with {applied} in {duration(time.perf_counter() - started)}")
    return 0


def _applied_method(model) -> str:
    """The method a model applies: an auto model's winner (the classic filter, or its network's method)."""
    auto = getattr(model, "auto", None)
    return f"{auto.winner}, chosen by auto" if auto is not None else model.method_name


def _prediction_options(args) -> dict:
    return {"tile": args.tile, "tta": args.tta, "batch_size": args.batch_size, "device": args.device}


def _predict_in_memory(args, model, path, target, std_target, label) -> None:
    from ..core.io.images import write_image

    image = read(path, args.axes, model.axes)
    progress = TileProgress(label, args.quiet)
    try:
        outputs = model.predict_outputs(image.data, image.axes, progress=progress, **_prediction_options(args))
    finally:
        progress.close()
    for name, out in (("denoised", target), ("noise_std", std_target)):
        if out is not None:
            if out.exists() and not args.overwrite:  # appeared while predicting
                raise SelfDenoiseError(f"{out} exists; pass --overwrite to replace it")
            write_image(out, outputs[name].astype("float32", copy=False), image.axes, image.scale, image.units)


def _predict_streamed(args, model, path, target, std_target, label) -> None:
    image = read(path, args.axes, model.axes, lazy=True, dask=True)
    progress = TileProgress(label, args.quiet, unit="block")
    try:
        model.predict_to(image.data, target, image.axes, noise_std=std_target, overwrite=args.overwrite,
                         scale=image.scale, units=image.units, progress=progress, **_prediction_options(args))
    finally:
        progress.close()


def _predict_distributed(args, model, targets, std_targets) -> None:
    from ..core.predict.cluster import FileJob, connect, predict_files

    jobs = []
    for path, target, std_target in zip(args.inputs, targets, std_targets):
        axes = args.axes or read(path, None, model.axes, lazy=True, dask=True).axes
        outputs = {"denoised": target, **({"noise_std": std_target} if std_target is not None else {})}
        jobs.append(FileJob(str(path), axes, outputs))
    client = connect(args.dask_scheduler, args.workers)
    where = args.dask_scheduler or f"{args.workers} local worker(s)"
    say(f"predicting {len(jobs)} image(s) on dask.distributed ({where})")
    progress = TileProgress("blocks", args.quiet, unit="block")
    try:
        predict_files(args.model, jobs, client, progress=progress, overwrite=args.overwrite,
                      **_prediction_options(args))
    finally:
        progress.close()
        if args.workers is not None:  # our own local cluster
            cluster = client.cluster
            client.close()
            cluster.close()
        else:
            client.close()
    for path, target, std_target in zip(args.inputs, targets, std_targets):
        say(f"{path} -> {target}" + (f" and {std_target}" if std_target is not None else ""))
