"""Prediction on a dask.distributed cluster: the blocks of big volumes, and many files, in parallel.

The client checks every input and creates every output (an OME-Zarr under a temporary name) first;
then one task per block (``streaming.Block``) reads its input region from the file, predicts it with
the model file and writes whole chunks of the output. Tasks share nothing but files, so inputs,
outputs and the model must sit on a file system every worker sees (as on any cluster). A block's
result does not depend on where or when it runs (``streaming``), so the output equals the
single-process one bit for bit, and a task lost with a killed worker is simply run again by dask
(it rewrites the same chunks). Only when every block is in are the outputs renamed to their final
names; a failure removes them.

Needs the ``[distributed]`` extra (dask[distributed] and zarr).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from ..errors import SelfDenoiseError
from ..steps import drain


@dataclass
class FileJob:
    """One input file and where its outputs go ({output name: path})."""

    path: str
    axes: str | None
    targets: dict


def connect(scheduler: str | None = None, workers: int | None = None):
    """A ``distributed.Client``: to the scheduler at ``scheduler``, or to a new local cluster of
    ``workers`` processes (one thread each: torch uses the cores)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise SelfDenoiseError("distributed prediction needs the [distributed] extra: "
                               "pip install 'napari-selfdenoise[distributed]'") from None
    if scheduler:
        try:
            return Client(scheduler, timeout="30s")
        except (OSError, TimeoutError) as err:
            raise SelfDenoiseError(f"cannot reach the dask scheduler at {scheduler}: {err}") from None
    if workers is None or workers < 1:
        raise SelfDenoiseError("--workers must be a positive number of processes")
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=logging.ERROR)
    return Client(cluster)


def predict_files_steps(model_path, jobs: list[FileJob], client, *, overwrite: bool = False, tile=None,
                        tta: bool = False, batch_size: int | None = None, device: str | None = None, block=None):
    """A step generator: predict every job's blocks on the cluster; yields (blocks done, blocks) and
    returns the paths written."""
    from distributed import as_completed

    from ..denoiser import Denoiser
    from .streaming import block_grid, check_target, open_outputs, open_sinks

    model_path = str(Path(model_path).resolve())
    model = Denoiser.load(model_path)
    unknown = {n for job in jobs for n in job.targets} - set(model.outputs)
    if unknown:
        raise SelfDenoiseError(f"the model has no {', '.join(sorted(unknown))} output")
    import torch

    settings = {"tile": tile, "tta": tta, "batch_size": batch_size, "device": device}
    # CPU kernels round differently with other thread counts: workers use this process's count, so
    # their blocks equal what a single process here computes, bit for bit (on the same kind of CPU).
    threads = torch.get_num_threads()
    futures, written = [], []
    # The outputs get their final names when the stack closes normally; a failure (a full disk,
    # Ctrl-C, SIGTERM) removes them, once no task can write into them any more.
    with ExitStack() as stack:
        try:
            for job in jobs:
                image, layout = _open_input(job.path, job.axes)
                model.check_layout(layout)
                paths = {n: check_target(p, overwrite) for n, p in job.targets.items()}
                temps = open_outputs(stack, paths, overwrite)
                sinks, block_shape = open_sinks(paths, temps, layout, image.scale, image.units, block,
                                                require_zarr=True)
                written += paths.values()
                source = (str(Path(job.path).resolve()), layout.axes)
                for number, one in enumerate(block_grid(layout, block_shape)):
                    futures.append(client.submit(run_block, model_path, source, sinks, one, settings, threads,
                                                 pure=False, key=f"selfdenoise-{os.path.basename(job.path)}-"
                                                                 f"{number}-{id(sinks)}"))
            for done, future in enumerate(as_completed(futures), start=1):
                future.result()  # raises the task's error here
                yield done, len(futures)
        except BaseException:
            client.cancel(futures)
            _wait_until_idle(client, futures)  # a task still running could write into a removed output
            raise
    return written


def _wait_until_idle(client, futures, seconds: float = 30.0) -> None:
    """Wait until no worker runs one of ``futures`` any more. Asked of the workers themselves: a
    cancelled task that already started goes on in its thread, but the scheduler forgets it at once."""
    import time

    keys = {f.key for f in futures}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            running = client.run(_running_keys, wait=True)
        except Exception:  # noqa: BLE001 -- the cluster is gone: nothing more will run
            return
        if not keys & {k for per_worker in running.values() for k in per_worker}:
            return
        time.sleep(0.1)


def _running_keys(dask_worker) -> list:
    """The keys of the tasks running on this worker, the cancelled ones that still run included."""
    return [ts.key for ts in dask_worker.state.all_running_tasks]


def predict_files(model_path, jobs: list[FileJob], client, progress: Callable[[int, int], None] | None = None,
                  **options) -> list[Path]:
    return drain(predict_files_steps(model_path, jobs, client, **options), progress)


def _open_input(path, axes):
    from ..data.checks import check_image
    from ..io.images import read_image

    image = read_image(path, axes=axes, lazy=True, dask=True)
    return image, check_image(image.data, image.axes, Path(path).name)


# ----------------------------------------------------------------------------------- on a worker


def run_block(model_path: str, source: tuple[str, str], sinks: dict, block, settings: dict, threads: int) -> int:
    """Predict one block and write it (runs on a worker; everything it needs comes from files)."""
    import torch

    from ..data.lazy import release_pages

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    from .streaming import predict_block, write_block

    denoiser, predictor = _model(model_path, os.stat(model_path).st_mtime_ns, **settings)
    data, layout = _input(*source)
    plan = predictor.plan(layout.spatial_shape, samples=layout.n_samples)
    results = predict_block(predictor, plan, data, layout, denoiser.normalization, block, denoiser.method.outputs)
    write_block(sinks, layout, block, {n: r for n, r in results.items() if n in sinks})
    release_pages(data)
    return block.sample


@functools.lru_cache(maxsize=2)
def _model(path: str, mtime: int, tile, tta, batch_size, device):
    from ..denoiser import Denoiser

    denoiser = Denoiser.load(path)
    return denoiser, denoiser.predictor(tile=tile, tta=tta, batch_size=batch_size, device=device)


@functools.lru_cache(maxsize=8)
def _input(path: str, axes: str):
    from ..data.axes import make_layout
    from ..io.images import read_image

    data = read_image(path, axes=axes, lazy=True, dask=True).data
    return data, make_layout(tuple(data.shape), axes)
