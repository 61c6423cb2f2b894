"""The ``selfdenoise`` command line: train, predict, calibrate, demo and info.

    selfdenoise demo                                   # synthetic data, ~30-60 s on 2 CPU cores
    selfdenoise train noisy.tif --method n2v2 --steps 2000 --out cells.sdmodel
    selfdenoise predict cells.sdmodel noisy.tif --out denoised.ome.tif
    selfdenoise calibrate noisy.tif --out classic.ome.tif --report calibration.json
    selfdenoise export cells.sdmodel --bmz cells.zip   # a bioimage.io (BioImage Model Zoo) package
    selfdenoise predict cells.zip noisy.tif --out denoised.ome.tif   # packages load too
    selfdenoise train more.tif --from cells.sdmodel --steps 500 --out tuned.sdmodel   # fine-tune
    selfdenoise info cells.sdmodel
    torchrun --nproc_per_node 4 -m napari_selfdenoise.cli train noisy.tif --out cells.sdmodel  # 4 GPUs

Exit codes: 0 success; 2 a bad request or bad input (one line ``selfdenoise: error: ...`` on stderr,
no traceback, nothing written); 130 interrupted (Ctrl-C; nothing written); 143 terminated (SIGTERM, from
kill or a cluster scheduler; cleaned up like Ctrl-C). Any other code means a bug.

Every input and output is checked before any work starts (``core.outputs.plan_output``: never over an
input, an existing output only with --overwrite), and models and images are written atomically at the
very end (``core.atomic``), so a failed or interrupted run leaves no partial files behind.

Importing this module is light (no torch): the heavy engine is imported inside the commands.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import threading
import time
from contextlib import ExitStack, nullcontext
from pathlib import Path

from . import __version__
from .core.errors import SelfDenoiseError
from .core.outputs import is_zarr_path, output_folder, plan_output, same_file

PROG = "selfdenoise"
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention
EXIT_TERMINATED = 143  # 128 + SIGTERM
_OVERWRITE_HELP = "replace outputs that exist (default: refuse); an input is never overwritten"

# The demo: a 256x256 image, and a small network that reaches a >= 3 dB gain (about 5 dB) in
# 400 steps, i.e. ~20-40 s on 2 CPU cores.
DEMO_SHAPE = (256, 256)
DEMO_STEPS = 400
DEMO_CONFIG = {"patch": 64, "batch": 8, "features": 16, "depth": 2}
DEMO_NOISE = {"kind": "poisson_gaussian", "photons": 30, "sigma": 0.03}


# ------------------------------------------------------------------------------ argument parsing


class _Parser(argparse.ArgumentParser):
    """argparse, but every error ends with one line ``selfdenoise: error: ...`` (exit code 2)."""

    def error(self, message):
        self.print_usage(sys.stderr)
        command = self.prog[len(PROG):].strip()
        self.exit(EXIT_ERROR, f"{PROG}: error: {command + ': ' if command else ''}{message}\n")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Fills ``{methods}`` and ``{devices}`` only when help is shown: listing them imports torch."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "{methods}" in text:
            from .core.methods import method_names

            text = text.replace("{methods}", ", ".join(method_names(include_classic=False)))
        if "{devices}" in text:
            from .core.device import available_devices

            text = text.replace("{devices}", ", ".join(available_devices()))
        return text


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, formatter_class=_HelpFormatter, description=(
        "Self-supervised denoising of microscopy images: train on your noisy images alone, then "
        "denoise them.\nStart with 'selfdenoise demo'. Exit codes: 0 ok, 2 bad input or request, "
        "130 interrupted, 143 terminated."))
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    common = _Parser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    # ---- train
    p = commands.add_parser("train", parents=[common], formatter_class=_HelpFormatter,
                            help="train a model on noisy images",
                            description="Train a self-supervised denoiser on one or more noisy images. "
                                        "Under torchrun (torchrun --nproc_per_node N -m napari_selfdenoise.cli "
                                        "train ...) it trains data-parallel on N GPUs (or N CPU processes): "
                                        "--batch stays the global batch, split evenly over the processes; "
                                        "only rank 0 validates, shows progress and writes the model.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="noisy images (.tif, .ome.tif, .npy)")
    p.add_argument("--out", "-o", required=True, metavar="MODEL", help="model file to write (.sdmodel)")
    p.add_argument("--method", metavar="METHOD",
                   help="auto (the default: trains the classic filter and n2s, nnet, n2same, drops the worse "
                        "ones early by their self-supervised score and keeps the best; --option "
                        "candidates=n2s,nnet chooses them) or one of: {methods}")
    p.add_argument("--axes", help="axes of the inputs, e.g. YX, ZYX, TYX, CYX (default: from the file)")
    budget = p.add_argument_group("budget (the first one reached ends training; none given: 2000 steps)")
    budget.add_argument("--steps", type=int, help="training steps")
    budget.add_argument("--epochs", type=int, help="epochs (of --steps-per-epoch steps)")
    budget.add_argument("--time-limit", type=float, metavar="SECONDS", help="wall-clock limit in seconds")
    budget.add_argument("--steps-per-epoch", type=int, help="steps between validations (default 100)")
    p.add_argument("--from", dest="start_from", metavar="MODEL",
                   help="fine-tune: start from this model (.sdmodel, or a bioimage.io .zip exported by "
                        "napari-selfdenoise) and continue training it on INPUT; its method, network and "
                        "normalisation are kept, the budget counts the new steps")
    p.add_argument("--patch", type=int, help="patch size in Y and X (default 64; with --from: the model's)")
    p.add_argument("--patch-z", type=int, help="patch size in Z, for 3D (default 16; with --from: the model's)")
    p.add_argument("--batch", type=int,
                   help="patches per step, in all (default: 16 on the CPU, on a GPU the largest power of two up "
                        "to 128 that fits in half its free memory; with --from: the model's); under torchrun each "
                        "of N processes trains on batch/N of them (batch must be a multiple of N x --accumulate)")
    p.add_argument("--accumulate", type=int, metavar="K",
                   help="gradient accumulation: each process splits its share of the batch into K "
                        "micro-batches, for less memory (default 1); N processes x K is what decides the "
                        "random draws, so --accumulate 2 in one process reproduces 2 processes")
    p.add_argument("--lr", type=float, help="learning rate (default 4e-4; with --from: the model's)")
    p.add_argument("--depth", type=int, help="U-Net poolings (default 2)")
    p.add_argument("--features", type=int, help="U-Net channels at the top level (default 32)")
    p.add_argument("--z-levels", type=int, metavar="N",
                   help="3D: how many of the --depth poolings also halve Z (default: all of them for stacks "
                        "of 8 or more Z planes, none for thinner ones, which pool only Y and X and train on "
                        "all their planes)")
    p.add_argument("--val-fraction", type=float, help="fraction held out for validation (default 0.1)")
    p.add_argument("--seed", type=int, help="random seed (default 0; with --from: the model's)")
    p.add_argument("--device", default="auto", help="auto (default) or one of: {devices}")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a method option, e.g. --option mask_fraction=0.01 (repeatable; values are JSON "
                        "when they parse as JSON). Every neural method has blind_radius=N (0-4): hide the "
                        "pixels within N of each blind spot, for noise shared by neighbouring pixels; nnet "
                        "has calibrate=false to keep the jointly trained noise model")
    p.add_argument("--mixture", type=int, metavar="K",
                   help="nnet: noise model as a mixture of K Gaussians (1-3; 1 = a single Gaussian)")
    _add_trust_code(p)
    p.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    p.set_defaults(func=cmd_train)

    # ---- predict
    p = commands.add_parser("predict", parents=[common], formatter_class=_HelpFormatter,
                            help="denoise images with a trained model",
                            description="Denoise images with a model; outputs are float32 OME-TIFF in the "
                                        "input's units.")
    p.add_argument("model", metavar="MODEL",
                   help="model file (.sdmodel) or bioimage.io package (.zip: ours, or a foreign one with "
                        "TorchScript weights, one input and one output)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="images to denoise")
    p.add_argument("--out", "-o", required=True, metavar="OUTPUT",
                   help="output file (one input; .ome.tif, .npy or .ome.zarr) or folder (several inputs: "
                        "<name>_denoised.ome.tif, or .ome.zarr with --workers/--dask-scheduler)")
    p.add_argument("--axes", help="axes of the inputs (default: from the file, else the model's)")
    p.add_argument("--tile", type=int, help="tile size in Y and X (default 512 on a GPU, 256 on the CPU for "
                                             "networks of depth <= 2; smaller uses less memory)")
    p.add_argument("--tta", action="store_true", help="average the 8 rotations/flips (8x slower, a bit better)")
    p.add_argument("--batch-size", type=int, help="tiles per forward pass (default 4 on a GPU, 1 on the CPU)")
    p.add_argument("--device", default="auto", help="auto (default) or one of: {devices}")
    p.add_argument("--noise-std", metavar="STD_OUTPUT",
                   help="also write the predicted noise standard deviation (models with a noise_std output)")
    p.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    big = p.add_argument_group(
        "big data (an output ending in .ome.zarr, or an input over 256 MB, is streamed block by block "
        "into the output file with bounded memory)")
    big.add_argument("--workers", type=int, metavar="N",
                     help="predict blocks on N local worker processes (dask.distributed; writes .ome.zarr)")
    big.add_argument("--dask-scheduler", metavar="ADDRESS",
                     help="predict blocks on a running dask.distributed cluster, e.g. tcp://node:8786 "
                          "(inputs, outputs and the model on a shared file system; writes .ome.zarr)")
    _add_trust_code(p)
    p.set_defaults(func=cmd_predict)

    # ---- calibrate
    from_names = "median, donut_median, gaussian, tv, nl_means, wavelet"
    p = commands.add_parser("calibrate", parents=[common], formatter_class=_HelpFormatter,
                            help="classical baseline: pick a filter by the self-supervised loss",
                            description="Classical denoising calibrated without clean data (Noise2Self "
                                        "loss): tries each filter over a parameter grid, keeps the best.")
    p.add_argument("input", metavar="INPUT", help="noisy image")
    p.add_argument("--out", "-o", required=True, metavar="OUTPUT", help="denoised image to write")
    p.add_argument("--axes", help="axes of the input (default: from the file)")
    p.add_argument("--denoisers", metavar="NAMES", help=f"comma-separated, from: {from_names} (default all)")
    p.add_argument("--report", metavar="REPORT.json", help="write the chosen filter and loss curves as JSON")
    p.add_argument("--blind-radius", type=int, default=0, metavar="N",
                   help="also hide the pixels within N of each J pixel in the loss (0-4; 1-2 for noise shared "
                        "by neighbouring pixels: resampled, demosaiced or binned images; slower)")
    p.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    p.set_defaults(func=cmd_calibrate)

    # ---- demo
    p = commands.add_parser("demo", parents=[common], formatter_class=_HelpFormatter,
                            help="denoise a synthetic image end to end and report the PSNR gain",
                            description="Make a noisy synthetic fluorescence image, train briefly, denoise "
                                        "it and report PSNR before and after.")
    p.add_argument("--out", "-o", default="selfdenoise-demo", metavar="FOLDER",
                   help="folder for the results (default ./selfdenoise-demo)")
    p.add_argument("--method", default="n2v2", metavar="METHOD", help="one of: {methods} (default n2v2)")
    p.add_argument("--steps", type=int, default=DEMO_STEPS, help=f"training steps (default {DEMO_STEPS})")
    p.add_argument("--seed", type=int, default=0, help="seed of the image, the noise and training (default 0)")
    p.add_argument("--device", default="auto", help="auto (default) or one of: {devices}")
    p.add_argument("--overwrite", action="store_true", help="replace the demo's files in an existing FOLDER")
    p.set_defaults(func=cmd_demo)

    # ---- info
    p = commands.add_parser("noise", parents=[common], formatter_class=_HelpFormatter,
                            help="write the noise-level curve (noise std against signal) as CSV",
                            description="Denoise INPUT with MODEL and write the noise-level curve: std and "
                                        "skewness of (noisy - denoised) per signal bin, and for nnet models "
                                        "the predicted std, in the input's units.")
    p.add_argument("model", metavar="MODEL", help="model file (.sdmodel)")
    p.add_argument("input", metavar="INPUT", help="noisy image")
    p.add_argument("--out", "-o", required=True, metavar="CURVE.csv", help="CSV file to write")
    p.add_argument("--axes", help="axes of the input (default: from the file, else the model's)")
    p.add_argument("--bins", type=int, default=10, help="signal bins (default 10)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, mps")
    _add_trust_code(p)
    p.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    p.set_defaults(func=cmd_noise)

    p = commands.add_parser("export", parents=[common], formatter_class=_HelpFormatter,
                            help="export a model as a bioimage.io (BioImage Model Zoo) package",
                            description="Write MODEL as a bioimage.io model package (spec 0.5, a .zip with "
                                        "PyTorch and TorchScript weights, test images, cover and README) "
                                        "that bioimage.io tools (bioimageio.core, deepImageJ, ...) can run "
                                        "and that 'selfdenoise predict' and napari load back.")
    p.add_argument("model", metavar="MODEL", help="model file (.sdmodel)")
    p.add_argument("--bmz", required=True, metavar="OUT.zip", help="the package to write (.zip)")
    p.add_argument("--input", metavar="IMAGE",
                   help="image for the test tensors and cover (default: the crop of the training data "
                        "kept in the model)")
    p.add_argument("--axes", help="axes of --input (default: from the file, else the model's)")
    p.add_argument("--name", help="model name (letters, digits, spaces, _ + - ( ); default from the method)")
    p.add_argument("--description", help="one or two sentences (default: method, axes, how it was trained)")
    p.add_argument("--author", action="append", metavar="AUTHOR",
                   help="'Name', 'Name <email>' or 'Name (affiliation)'; repeatable (default: your user name)")
    p.add_argument("--license", metavar="SPDX", help="licence of the weights, an SPDX id (default CC-BY-4.0)")
    p.add_argument("--tag", action="append", metavar="TAG",
                   help="a tag; repeatable (default: denoising, self-supervised, 2d/3d, the method, ...)")
    p.add_argument("--validate", action="store_true",
                   help="also test the package with bioimageio.core before writing it (needs the [bmz] "
                        "extra; a few seconds)")
    _add_trust_code(p)
    p.add_argument("--overwrite", action="store_true", help=_OVERWRITE_HELP)
    p.set_defaults(func=cmd_export)

    p = commands.add_parser("info", parents=[common], formatter_class=_HelpFormatter,
                            help="describe a model file", description="Describe a model file or bioimage.io package.")
    p.add_argument("model", metavar="MODEL", help="model file (.sdmodel) or bioimage.io package (.zip)")
    _add_trust_code(p)
    p.set_defaults(func=cmd_info)
    return parser


def _add_trust_code(parser) -> None:
    parser.add_argument(
        "--trust-code", action="store_true",
        help="run the TorchScript weights of a foreign bioimage.io package: a program written by the "
             "package's author, which runs with your permissions (in a separate, memory-bounded process); "
             "only for packages whose author you trust (default: refused)")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_usage(sys.stderr)
        return _fail("give a command: train, predict, calibrate, noise, export, demo or info "
                     "(try 'selfdenoise demo')")
    restore_sigterm = _raise_on_sigterm()
    try:
        if args.func is not cmd_train and _under_torchrun():
            raise SelfDenoiseError("only 'selfdenoise train' runs under torchrun (several processes); "
                                   "run the other commands as one process")
        return int(args.func(args) or 0)
    except KeyboardInterrupt as err:
        _forget_interrupt()
        if isinstance(err, _Terminated):
            return _fail("terminated; nothing was written", EXIT_TERMINATED)
        return _fail("interrupted; nothing was written", EXIT_INTERRUPTED)
    except (SelfDenoiseError, OSError) as err:  # OSError: FileNotFoundError, PermissionError, disk full...
        return _fail(_message(err))
    except MemoryError:
        return _fail("out of memory; use smaller images, --tile or --batch")
    except RuntimeError as err:
        if type(err).__name__ == "OutOfMemoryError":  # torch's, on a GPU
            return _fail("the device ran out of memory; use a smaller --tile/--batch-size or --device cpu")
        raise
    finally:
        restore_sigterm()


class _Terminated(KeyboardInterrupt):
    """SIGTERM raised as an exception, like Ctrl-C's KeyboardInterrupt: the same cleanup runs (temporary
    outputs removed, a local cluster closed) before the exit."""


def _raise_on_sigterm():
    """Handle SIGTERM like Ctrl-C while a command runs (in the main thread: only there can Python handle
    signals); returns the function that puts the previous handler back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def terminate(number, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough: let the cleanup finish
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    return lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _forget_interrupt() -> None:
    """Keep a handled Ctrl-C from turning into death by SIGINT under ``python -m``.

    CPython remembers a KeyboardInterrupt that left code run by ``exec`` of a string (libraries do this
    while importing) and, under ``-m``, kills the process with SIGINT at exit even though we handled it:
    the exit status would be -2, not 130. Running any string resets that flag.
    """
    exec("pass")


def _under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1  # not core.distributed's: that imports torch


def _message(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename is not None:
        reason = err.strerror or str(err)
        return f"{reason.lower() if reason else 'cannot access'}: {err.filename}"
    return " ".join(str(err).split()) or type(err).__name__


def _fail(message: str, code: int = EXIT_ERROR) -> int:
    sys.stderr.flush()
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


# ------------------------------------------------------------------------------ shared helpers


def _say(*args):
    print(*args, flush=True)


def _hint_blind_radius(image, flag: str) -> None:
    """Tell the user (stderr) when the noise looks shared by neighbouring pixels and how to set the option."""
    from .core.blind_radius import shared_noise_hint

    hint = shared_noise_hint(image.data, image.axes)
    if hint:
        print(f"{PROG}: hint: {hint} ({flag}).", file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def _loss(value) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4g}"


def _check_device(name: str):
    from .core.device import resolve_device

    return resolve_device(name)


def _check_method(name: str, auto: bool = False) -> str:
    from .core.auto import AUTO
    from .core.methods import CLASSIC, method_names

    names = ([AUTO] if auto else []) + method_names(include_classic=False)
    if name not in names:
        hint = " (the classic baseline is 'selfdenoise calibrate')" if name == CLASSIC else ""
        raise SelfDenoiseError(f"unknown method {name!r}{hint}; choose one of: {', '.join(names)}")
    return name


def _parse_options(pairs: list[str]) -> dict:
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


_IMAGE_SUFFIXES = (".tif", ".tiff", ".npy")
_OUTPUT_SUFFIXES = _IMAGE_SUFFIXES + (".zarr",)  # predict also streams into OME-Zarr


def _read(path, axes: str | None, fallback_axes: str | None = None, lazy: bool | None = None,
          dask: bool = False):
    """Read an image: ``axes`` if given, else the file's metadata, else ``fallback_axes``."""
    from functools import partial

    from .core.io import read_image

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
        except Exception:  # let read_image say what is wrong with the file
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


def _check_input(image, name: str):
    from .core.data import check_image

    return check_image(image.data, image.axes, name)


class _TileProgress:
    """``progress(done, total)`` callback that drives a tqdm bar created on the first call."""

    def __init__(self, desc: str, quiet: bool, unit: str = "tile"):
        self.desc, self.quiet, self.bar, self.unit = desc, quiet, None, unit

    def __call__(self, done: int, total: int):
        if self.quiet:
            return
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=self.desc, unit=self.unit, file=sys.stderr, leave=False,
                            dynamic_ncols=True)
        self.bar.update(done - self.bar.n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _train_with_progress(model, images, quiet: bool, desc: str = "training"):
    """Run ``model.train`` with a tqdm bar (steps, or seconds when only a time limit bounds it)."""
    from tqdm.auto import tqdm

    config = model.config
    by_time = config.max_steps is None
    total = config.time_limit if by_time else config.max_steps
    fmt = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s{postfix}" if by_time else None
    last = None
    val = None
    start = model.state.elapsed  # a resumed model counts its earlier training time
    first_step = model.state.step  # ... and its earlier steps: the budget counts the new ones
    with tqdm(total=total, desc=desc, unit="s" if by_time else "step", file=sys.stderr, disable=quiet,
              dynamic_ncols=True, bar_format=fmt, leave=True) as bar:
        for event in model.train(images):
            stage = event.extra.get("stage")  # a finishing step after the last step (N-net's calibration)
            if not by_time and event.max_steps and event.max_steps - first_step != bar.total:
                bar.total = event.max_steps - first_step  # auto: every candidate's steps
            if stage is None:
                last = event
                if event.val_loss is not None:
                    val = event.val_loss
                postfix = {"loss": _loss(event.train_loss)}
                if "candidate" in event.extra:
                    postfix = {"method": event.extra["candidate"], **postfix}
                if val is not None:
                    postfix["val"] = _loss(val)
                if by_time:
                    postfix["step"] = event.step
                bar.set_postfix(postfix, refresh=False)
            else:
                bar.set_postfix_str(f"{stage}...", refresh=False)
            position = min(event.elapsed - start, total) if by_time else event.step - first_step
            bar.update(position - bar.n)  # redraws at most every 0.1 s
            if event.done or stage:
                bar.refresh()
    return last


# ------------------------------------------------------------------------------ train


_TRAIN_DEFAULTS = {"patch": 64, "patch_z": 16, "batch": None, "accumulate": 1, "lr": 4e-4, "depth": 2,
                   "features": 32, "z_levels": None, "val_fraction": 0.1, "seed": 0, "steps_per_epoch": 100}
# With --from these come from the model: they decide the network, so they cannot change.
_FIXED_BY_MODEL = ("depth", "features", "z_levels")


def cmd_train(args) -> int:
    from .core.axes import validate_axes

    out = plan_output(args.out, inputs=[*args.inputs, args.start_from], overwrite=args.overwrite, kind="model file")
    if args.axes:
        validate_axes(args.axes)
    from .core.config import TrainConfig
    from .core.denoiser import Denoiser

    given = {k: getattr(args, k) for k in _TRAIN_DEFAULTS if getattr(args, k) is not None}
    start = None
    if args.start_from:
        start = _load_start_model(args, given)
        method = start.config.method
    else:
        method = _check_method(args.method or "auto", auto=True)
    options = _parse_options(args.option)
    if args.mixture is not None:
        options["mixture"] = args.mixture

    images = [_read(path, args.axes, start.config.axes if start else None, dask=True)  # big files stay lazy
              for path in args.inputs]
    axes = {image.axes for image in images}
    if len(axes) > 1:
        listed = ", ".join(f"{Path(i.path).name}: {i.axes}" for i in images)
        raise SelfDenoiseError(f"the inputs have different axes ({listed}); train on one kind, or pass --axes")
    axes = images[0].axes
    budget_args = dict(steps=args.steps, epochs=args.epochs, time_limit=args.time_limit)
    if start is None:
        config = TrainConfig(method=method, axes=axes, device=args.device, method_options=options,
                             **budget_args, **{**_TRAIN_DEFAULTS, **given})
        model = Denoiser(config=config)  # checks the method options
    else:
        model = start
        model.prepare_fine_tuning(axes, device=args.device, method_options=options, **budget_args, **given)
        config = model.config
    device = _check_device(args.device)
    for image in images:
        layout = _check_input(image, Path(image.path).name)
        if start is not None:
            model._check_compatible(layout)
        _check_patch_fits(layout, config, Path(image.path).name)

    from .core import distributed

    group = distributed.init_from_env(args.device)  # torchrun: join the other processes
    try:
        return _train_and_save(model, images, out, device, group, args.quiet, args.start_from)
    finally:
        distributed.shutdown()


def _train_and_save(model, images, out, device, group, quiet: bool, start_from=None) -> int:
    """Train, then write the model; with several processes only rank 0 reports and writes."""
    config, method = model.config, model.config.method
    say = _say if group.is_main else (lambda *args: None)
    budget = [f"{config.max_steps} steps" if config.max_steps else None,
              f"at most {_duration(config.time_limit)}" if config.time_limit else None]
    sizes = ", ".join("x".join(map(str, i.data.shape)) for i in images)
    each = config.batch // group.world_size if config.batch else "chosen for the device"
    where = f"{group.world_size} processes ({device.type}), batch {each} each" \
        if group.active else str(device)
    verb = f"fine-tuning {method} (from {Path(start_from).name}, {model.state.step} steps)" if start_from \
        else f"training {method}"
    if model.method is None:  # auto: the candidates race
        from .core.auto import check_candidates

        verb += f" (the classic filter, then {', '.join(check_candidates(config.method_options))} race)"
    options = model.method.options if model.method is not None else {"blind_radius": 0, **config.method_options}
    if group.is_main and options.get("blind_radius") == 0:  # methods with the option, left at 0
        _hint_blind_radius(images[0], "--option blind_radius=2")
    say(f"{verb} on {len(images)} image(s) ({config.axes}: {sizes}) for "
        f"{' or '.join(b for b in budget if b)} on {where}")
    started = time.perf_counter()
    first_step = model.state.step
    last = _train_with_progress(model, [image.data for image in images], quiet or not group.is_main)
    if not group.is_main:
        return 0
    for note in last.extra.get("notes", []) if last is not None else []:
        say(note)
    model.save(out)
    state = model.state
    done = f"{state.step - first_step} more steps ({state.step} in all)" if start_from else f"{state.step} steps"
    if model.auto is not None:
        say(_auto_summary(model.auto))
        method = f"auto (winner {model.auto.winner}; network {model.config.method})"
    say(f"trained {method} for {done} in {_duration(time.perf_counter() - started)}, "
        f"best validation loss {_loss(state.best_val_loss)}; model saved to {out}")
    return 0


def _auto_summary(auto) -> str:
    """The score table, winner and quality estimate of an auto model (train summary, info)."""
    lines = ["self-supervised score (masked-pixel loss on the same held-out pixels; lower is better):"]
    lines += [f"  {line}" for line in auto.table().splitlines()]
    lines.append(f"winner: {auto.winner}")
    if auto.estimate is not None:
        lines.append(f"quality estimate: {auto.estimate.text()}")
    return "\n".join(lines)


def _load_start_model(args, given):
    """The model that ``train --from`` continues, with the options that cannot change checked."""
    model = _load_ours(args.start_from, args.trust_code, "fine-tuned")
    if not getattr(model, "trainable", False):
        raise SelfDenoiseError(f"{args.start_from} is a foreign bioimage.io model (prediction only); only "
                               "models trained with napari-selfdenoise can be fine-tuned")
    if args.method and args.method != model.config.method:
        raise SelfDenoiseError(f"{args.start_from} is a {model.config.method} model; fine-tuning keeps its "
                               f"method (leave out --method {args.method})")
    for key in _FIXED_BY_MODEL:
        if key in given and given[key] != getattr(model.config, key):
            raise SelfDenoiseError(f"--{key} {given[key]} differs from the model's {getattr(model.config, key)}; "
                                   "fine-tuning keeps the network (leave it out)")
    if args.mixture is not None and args.mixture != model.architecture.get("mixture", args.mixture):
        raise SelfDenoiseError("--mixture differs from the model's; fine-tuning keeps the network")
    return model


def _check_patch_fits(layout, config, name: str) -> None:
    shape = dict(zip(layout.axes, layout.shape))
    multiple = 2**config.depth
    small = min(shape["Y"], shape["X"])
    if small < config.patch:
        fits = small // multiple * multiple
        hint = (f"use a smaller --patch, e.g. --patch {fits}" if fits >= multiple
                else f"the image is too small for a depth-{config.depth} network")
        raise SelfDenoiseError(
            f"{name} is {shape['Y']}x{shape['X']} pixels (YX), smaller than the patch {config.patch}; {hint}")
    if "Z" in shape:
        from .core.networks import auto_z_levels

        levels = auto_z_levels(shape["Z"], config.depth) if config.z_levels is None else config.z_levels
        z_multiple = 2**levels
        if shape["Z"] < z_multiple:
            fits = max(0, shape["Z"].bit_length() - 1)
            raise SelfDenoiseError(
                f"{name} has {shape['Z']} Z planes, fewer than the {z_multiple} that {levels} Z poolings "
                f"need; use --z-levels {fits} or fewer (or leave it out: automatic)")


# ------------------------------------------------------------------------------ predict


def cmd_predict(args) -> int:
    from .core.axes import validate_axes
    from .core.denoiser import Denoiser

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
    if distributed and not getattr(model, "trainable", False):
        raise SelfDenoiseError(f"{args.model} is a foreign bioimage.io model; it runs in this process only "
                               "(leave out --workers and --dask-scheduler)")
    applied = _applied_method(model)
    name = f"model {Path(args.model).name} (method {applied})"
    if args.noise_std and "noise_std" not in model.method.outputs:
        raise SelfDenoiseError(f"{name} has no noise-std output; only nnet models do")
    _check_device(args.device)

    # Check every input before denoising any (files are read again below, one at a time).
    n = len(args.inputs)
    streamed, sizes = [], []
    for path in args.inputs:
        image = _read(path, args.axes, model.config.axes, lazy=True, dask=True)
        layout = _check_input(image, Path(path).name)
        model._check_compatible(layout)
        streamed.append(_is_big(image.data))
        sizes.append(math.prod(image.data.shape) * 4)  # float32 outputs shaped like the input
        del image
    extension = ".ome.zarr" if distributed else ".ome.tif"
    targets = _targets(args.inputs, args.out, "_denoised", args.overwrite, extension, args.model)
    std_targets = _targets(args.inputs, args.noise_std, "_noise_std", args.overwrite, extension, args.model) \
        if args.noise_std else [None] * n
    clash = set(map(str, targets)) & set(map(str, filter(None, std_targets)))
    if clash:
        raise SelfDenoiseError(f"--out and --noise-std name the same file {sorted(clash)[0]}")
    streamed = [big or _is_zarr(t) or _is_zarr(s) for big, t, s in zip(streamed, targets, std_targets)]
    if distributed and not all(_is_zarr(t) for t in targets + std_targets if t is not None):
        raise SelfDenoiseError("--workers and --dask-scheduler write OME-Zarr: give outputs ending in .ome.zarr")
    for target, stream in zip(targets + std_targets, streamed + streamed):
        if target is not None and (stream or distributed) and target.name.lower().endswith(".npy"):
            raise SelfDenoiseError(f"{target}: big inputs are streamed into .ome.zarr or .ome.tif, not .npy")
    _check_free_space(targets + std_targets, sizes + sizes)

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
            _say(f"{path} -> {target}" + (f" and {std_target}" if std_target is not None else ""))
    _say(f"denoised {n} image(s) with {applied} in {_duration(time.perf_counter() - started)}")
    return 0


def _applied_method(model) -> str:
    """The method a model applies: an auto model's winner (the classic filter, or its network's method)."""
    auto = getattr(model, "auto", None)
    return f"{auto.winner}, chosen by auto" if auto is not None else model.config.method


def _check_free_space(targets, sizes) -> None:
    """Before predicting: OME-TIFF and .npy outputs are uncompressed, so the space they need is known."""
    from .core.atomic import check_free_space

    for target, size in zip(targets, sizes):
        if target is not None and not _is_zarr(target):
            check_free_space(target if target.parent.exists() else target.parent, size)


def _is_zarr(path) -> bool:
    return path is not None and is_zarr_path(path)


def _is_big(data) -> bool:
    """Inputs that are streamed: those too big to be read whole without a thought."""
    from .core.io import LAZY_THRESHOLD
    from .core.lazy import nbytes

    return nbytes(data) > LAZY_THRESHOLD


def _prediction_options(args) -> dict:
    return {"tile": args.tile, "tta": args.tta, "batch_size": args.batch_size, "device": args.device}


def _predict_in_memory(args, model, path, target, std_target, label) -> None:
    from .core.io import write_image

    image = _read(path, args.axes, model.config.axes)
    progress = _TileProgress(label, args.quiet)
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
    image = _read(path, args.axes, model.config.axes, lazy=True, dask=True)
    progress = _TileProgress(label, args.quiet, unit="block")
    try:
        model.predict_to(image.data, target, image.axes, noise_std=std_target, overwrite=args.overwrite,
                         scale=image.scale, units=image.units, progress=progress, **_prediction_options(args))
    finally:
        progress.close()


def _predict_distributed(args, model, targets, std_targets) -> None:
    from .core.cluster import FileJob, connect, predict_files

    jobs = []
    for path, target, std_target in zip(args.inputs, targets, std_targets):
        axes = args.axes or _read(path, None, model.config.axes, lazy=True, dask=True).axes
        outputs = {"denoised": target, **({"noise_std": std_target} if std_target is not None else {})}
        jobs.append(FileJob(str(path), axes, outputs))
    client = connect(args.dask_scheduler, args.workers)
    where = args.dask_scheduler or f"{args.workers} local worker(s)"
    _say(f"predicting {len(jobs)} image(s) on dask.distributed ({where})")
    progress = _TileProgress("blocks", args.quiet, unit="block")
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
        _say(f"{path} -> {target}" + (f" and {std_target}" if std_target is not None else ""))


def _targets(inputs, out, suffix: str, overwrite: bool = False, extension: str = ".ome.tif",
             model=None) -> list[Path]:
    """Output paths, checked up front (``plan_output``: never an input or the model, an existing output
    only with ``overwrite``), no two inputs on one file. Several inputs: a folder, made when written."""
    from .core.io import output_path_for

    out = Path(out)
    n = len(inputs)
    sources = [*inputs, model]
    if n == 1 and (not out.is_dir() or _is_zarr(out)):
        return [plan_output(output_path_for(inputs[0], out, 1), inputs=sources, overwrite=overwrite,
                            suffixes=_OUTPUT_SUFFIXES)]
    if out.exists() and not out.is_dir():
        raise SelfDenoiseError(f"{out} is a file; with {n} inputs the output must be a folder")
    plan_output(out, inputs=sources, folder=True, kind="output folder")
    targets, seen = [], {}
    for path in inputs:
        target = output_path_for(path, out, n, extension, create=False)
        if suffix != "_denoised":
            target = target.with_name(target.name.replace(f"_denoised{extension}", f"{suffix}{extension}"))
        key = str(target.resolve())
        if key in seen:
            raise SelfDenoiseError(f"{seen[key]} and {path} would both be written to {target}; rename one")
        seen[key] = path
        if out.is_dir():  # else nothing can be there yet
            plan_output(target, inputs=sources, overwrite=overwrite)
        targets.append(target)
    return targets


# ------------------------------------------------------------------------------ calibrate


def cmd_calibrate(args) -> int:
    from .core.axes import validate_axes
    from .core.classic import DENOISER_PARAMETERS, calibrate_and_denoise
    from .core.io import output_path_for, write_image

    if args.axes:
        validate_axes(args.axes)
    denoisers = tuple(DENOISER_PARAMETERS)
    if args.denoisers is not None:
        denoisers = tuple(d.strip() for d in args.denoisers.split(",") if d.strip())
        unknown = [d for d in denoisers if d not in DENOISER_PARAMETERS]
        if unknown or not denoisers:
            raise SelfDenoiseError(f"unknown classic denoiser {', '.join(unknown) or '(none given)'}; "
                                   f"choose from {', '.join(DENOISER_PARAMETERS)}")
    image = _read(args.input, args.axes)
    _check_input(image, Path(args.input).name)
    if not args.blind_radius:
        _hint_blind_radius(image, "--blind-radius 2")
    target = plan_output(output_path_for(args.input, args.out, 1), inputs=[args.input], overwrite=args.overwrite,
                         suffixes=_IMAGE_SUFFIXES)
    report = plan_output(args.report, inputs=[args.input], overwrite=args.overwrite, kind="report") \
        if args.report else None
    if report is not None and same_file(report, target):
        raise SelfDenoiseError(f"the report {report} would overwrite the output image; choose another name")

    from tqdm.auto import tqdm

    started = time.perf_counter()
    with tqdm(desc="calibrating", unit="eval", file=sys.stderr, disable=args.quiet, leave=False,
              dynamic_ncols=True) as bar:
        def progress(done, total):
            bar.total = total
            bar.update(done - bar.n)

        denoised, result = calibrate_and_denoise(image.data, image.axes, denoisers=denoisers, progress=progress,
                                                 blind_radius=args.blind_radius)
    write_image(target, denoised.astype("float32", copy=False), image.axes, image.scale, image.units)
    if report is not None:
        _write_json(report, {"input": str(args.input), "output": str(target), "axes": image.axes,
                             **result.to_dict()})
    _say(_calibration_table(result))
    _say(f"chose {result.denoiser} ({result.parameter_name} {result.parameter:g}) in "
         f"{_duration(time.perf_counter() - started)}; wrote {target}" + (f" and {report}" if report else ""))
    return 0


def _calibration_table(result) -> str:
    """The self-supervised loss per parameter, with a bar per row (longer = worse)."""
    rows = [(name, p, loss) for name, curve in result.losses.items() for p, loss in curve]
    if not rows:
        return "no losses"
    low, high = min(r[2] for r in rows), max(r[2] for r in rows)
    width = max(len(name) for name, _, _ in rows)
    lines = ["self-supervised loss per parameter (lower is better; * = chosen):"]
    from .core.classic import DENOISER_PARAMETERS

    for name, p, loss in rows:
        bar = "#" * (1 + round(19 * (loss - low) / (high - low))) if high > low else "#"
        mark = "*" if name == result.denoiser and p == result.parameter else " "
        label = f"{DENOISER_PARAMETERS.get(name, 'parameter')} {p:g}"
        lines.append(f" {mark} {name:<{width}}  {label:<14} {loss:<11.5g} {bar}")
    return "\n".join(lines)


def _write_json(path: Path, data) -> None:
    from .core.atomic import atomic_write

    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------ demo


def cmd_demo(args) -> int:
    method = _check_method(args.method)
    if args.steps < 1:
        raise SelfDenoiseError("--steps must be a positive integer")
    folder = plan_output(args.out, folder=True, kind="demo results")
    if folder.is_dir():
        for name in ("noisy.ome.tif", "denoised.ome.tif", "clean.ome.tif", "model.sdmodel"):
            plan_output(folder / name, overwrite=args.overwrite)
    device = _check_device(args.device)

    from .core.denoiser import Denoiser
    from .core.io import write_image
    from .core.synthetic import add_noise, fluorescence_image, psnr

    started = time.perf_counter()
    clean = fluorescence_image(DEMO_SHAPE, seed=args.seed)
    noisy = add_noise(clean, seed=args.seed + 1, **DEMO_NOISE)
    _say(f"selfdenoise demo: a synthetic {DEMO_SHAPE[0]}x{DEMO_SHAPE[1]} fluorescence image with "
         f"Poisson-Gaussian noise ({DEMO_NOISE['photons']} photons at full brightness, read noise "
         f"{DEMO_NOISE['sigma']})")
    _say(f"training {method} for {args.steps} steps on {device} (a small network: "
         f"{DEMO_CONFIG['features']} features, batch {DEMO_CONFIG['batch']})")
    model = Denoiser(method, "YX", steps=args.steps, seed=args.seed, device=args.device, **DEMO_CONFIG)
    _train_with_progress(model, noisy, args.quiet)
    progress = _TileProgress("denoising", args.quiet)
    try:
        denoised = model.predict(noisy, device=args.device, progress=progress)
    finally:
        progress.close()

    before, after = psnr(clean, noisy), psnr(clean, denoised)
    from .core.atomic import atomic_write

    # A new folder appears only with all four files in it (a full disk leaves no empty folder).
    with nullcontext(folder) if folder.is_dir() else atomic_write(folder, overwrite=False) as where:
        where.mkdir(exist_ok=True)
        for name, data in (("noisy", noisy), ("denoised", denoised), ("clean", clean)):
            write_image(where / f"{name}.ome.tif", data, "YX")
        model.save(where / "model.sdmodel")
    _say("")
    _say(f"  input  PSNR  {before:6.2f} dB   noisy.ome.tif")
    _say(f"  output PSNR  {after:6.2f} dB   denoised.ome.tif")
    _say(f"  gain        {after - before:+6.2f} dB")
    _say("")
    _say(f"wrote noisy, denoised and clean .ome.tif and model.sdmodel to {folder}{os.sep} "
         f"in {_duration(time.perf_counter() - started)}")
    _say(f"look at them:  napari {folder / '*.ome.tif'}")
    _say("your own data: selfdenoise train noisy.tif --out my.sdmodel && "
         "selfdenoise predict my.sdmodel noisy.tif --out denoised.ome.tif")
    return 0


# ------------------------------------------------------------------------------ info


def cmd_noise(args) -> int:
    from .core.denoiser import Denoiser
    from .core.noise import noise_curve

    out = plan_output(args.out, inputs=[args.model, args.input], overwrite=args.overwrite, kind="curve file")
    if args.bins < 1:
        raise SelfDenoiseError("--bins must be a positive integer")
    model = Denoiser.load(args.model, trust_code=args.trust_code)
    image = _read(args.input, args.axes, model.config.axes)
    layout = _check_input(image, Path(args.input).name)
    model._check_compatible(layout)
    progress = _TileProgress(Path(args.input).name, args.quiet)
    try:
        outputs = model.predict_outputs(image.data, image.axes, device=args.device, progress=progress)
    finally:
        progress.close()
    curve = noise_curve(image.data, outputs["denoised"], outputs.get("noise_std"), bins=args.bins)
    from .core.atomic import atomic_write

    with atomic_write(out) as tmp:
        curve.write_csv(tmp)
    _say(f"noise curve ({len(curve.signal)} bins) written to {out}")
    return 0


def _z_pooling(arch: dict) -> str:
    if arch.get("dims") != 3:
        return ""
    levels = arch.get("z_levels", arch.get("depth"))  # older files pool Z at every level
    return ", Z pooled at every level" if levels == arch.get("depth") else \
        f", Z pooled at {levels} of {arch.get('depth')} levels (Y and X only below)"


def cmd_export(args) -> int:
    from .core.bmz import export_bmz

    target = plan_output(args.bmz, inputs=[args.model, args.input], overwrite=args.overwrite,
                         kind="bioimage.io package", suffixes=(".zip",))
    if args.validate:
        _bioimageio_core()  # before any work: the extra may be missing
    model = _load_ours(args.model, args.trust_code, "exported")
    if not getattr(model, "trainable", False):
        raise SelfDenoiseError(f"{args.model} is a foreign bioimage.io model; it is already a package")
    image = None
    if args.input:
        read = _read(args.input, args.axes, model.config.axes)
        _check_input(read, Path(args.input).name)
        image = (read.data, read.axes)
    started = time.perf_counter()
    # Written under a hidden name first and tested there with --validate: a failure leaves no package.
    export_bmz(model, target, name=args.name, description=args.description, authors=args.author,
               license=args.license, tags=args.tag, image=image[0] if image else None,
               axes=image[1] if image else None, check=_validate_package if args.validate else None)
    size = target.stat().st_size / 1024**2
    _say(f"exported {model.config.method} ({model.config.axes}) to {target} ({size:.1f} MB, bioimage.io "
         f"model spec 0.5) in {_duration(time.perf_counter() - started)}"
         + ("; bioimageio.core test passed" if args.validate else ""))
    return 0


def _bioimageio_core():
    try:
        import bioimageio.core  # noqa: F401
    except ImportError as err:
        raise SelfDenoiseError("--validate needs bioimageio.core: pip install \"napari-selfdenoise[bmz]\"") from err
    return bioimageio.core


def _validate_package(path) -> None:
    _say("testing the package with bioimageio.core ...")
    core = _bioimageio_core()
    summary = core.test_model(str(path))
    if summary.status != "passed":
        failed = [d for d in summary.details if d.status == "failed"]
        reasons = "; ".join(f"{d.name}: {'; '.join(e.msg for e in d.errors[:2])}" for d in failed[:3])
        raise SelfDenoiseError(f"the package failed the bioimageio.core test ({reasons or summary.status}); "
                               "nothing was written")


def _load_ours(path, trust_code: bool, what: str):
    """A model for train --from and export: foreign TorchScript is refused as foreign (trust would not help)."""
    from .core.denoiser import Denoiser
    from .core.errors import UntrustedCodeError

    try:
        return Denoiser.load(path, trust_code=trust_code)
    except UntrustedCodeError:
        raise SelfDenoiseError(f"{path} is a foreign bioimage.io model (prediction only); only models trained "
                               f"with napari-selfdenoise can be {what}") from None


def cmd_info(args) -> int:
    from .core.bmz import is_bmz_package, load_bmz
    from .core.denoiser import Denoiser

    # A foreign package is described even when its code is not trusted (its weights are then not loaded).
    model = load_bmz(args.model, args.trust_code, describe_untrusted=True) if is_bmz_package(args.model) \
        else Denoiser.load(args.model)
    if not getattr(model, "trainable", False):
        rows = model.describe()
        width = max(len(k) for k, _ in rows)
        for key, value in rows:
            _say(f"{key + ':':<{width + 1}} {value}")
        return 0
    config, arch, state = model.config, model.architecture, model.state
    version = getattr(model, "package_version", __version__)
    budget = [f"{k} {v}" for k, v in (("steps", config.steps), ("epochs", config.epochs),
                                        ("time limit", config.time_limit)) if v is not None]
    rows = [
        ("model", str(args.model)),
        ("method", f"{config.method} ({model.method.title})"),
        ("axes", config.axes),
        ("outputs", ", ".join(model.method.outputs)),
        ("trained", f"{state.step} steps in {_duration(state.elapsed)}"),
        ("best val loss", _loss(state.best_val_loss)),
        ("network", f"{arch.get('dims', '?')}D U-Net{' (N2V2)' if arch.get('n2v2') else ''}, depth "
                    f"{arch.get('depth')}, {arch.get('features')} features, {arch.get('in_channels')} channel(s)"
                    + _z_pooling(arch)),
        ("training", f"patch {config.patch}, batch {config.batch}"
                     + (f" in {config.accumulate} micro-batches" if config.accumulate > 1 else "")
                     + f", lr {config.lr:g}, seed {config.seed}"
                     + (f", {', '.join(budget)}" if budget else "")),
    ]
    if config.method_options:
        rows.append(("options", ", ".join(f"{k}={v}" for k, v in config.method_options.items())))
    if model.auto is not None:
        rows.append(("auto", f"winner {model.auto.winner}" + (f" (applied; network {config.method} kept)"
                                                             if model.auto.winner != config.method else "")))
        rows.append(("scores", "\n" + "\n".join(f"  {line}" for line in model.auto.table().splitlines())))
        rows.append(("quality", model.auto.estimate.text() if model.auto.estimate else "-"))
    rows.append(("saved by", f"napari-selfdenoise {version} (this is {__version__})"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        _say(f"{key + ':':<{width + 1}} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
