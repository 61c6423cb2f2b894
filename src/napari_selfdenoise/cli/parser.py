"""The arguments of every command and their help.

``train``'s options that set a ``TrainConfig`` field are built from the field's metadata (help, range,
flag, metavar) and default (its fields are the one source); the lists of methods, their options and the
devices are filled in only when help is shown (listing them imports torch).
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import MISSING, fields

from .._version import __version__
from ..core.config import TrainConfig, is_whole, range_text
from .common import EXIT_ERROR, PROG
from .demo import DEMO_STEPS

# In the order the help and the "give a command" message list them; each is a module with cmd_<name>.
COMMANDS = ("train", "predict", "calibrate", "noise", "export", "demo", "info")
DEFAULTS = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
CONFIG_FIELDS = {f.name: f for f in fields(TrainConfig)}
# With --from these come from the model unless given (the network's own, depth and features, always do).
FROM_MODEL = ("patch", "patch_z", "batch", "lr", "lr_decay", "seed")
OVERWRITE_HELP = "replace outputs that exist (default: refuse); an input is never overwritten"


class _Parser(argparse.ArgumentParser):
    """argparse, but every error ends with one line ``selfdenoise: error: ...`` (exit code 2)."""

    def error(self, message):
        self.print_usage(sys.stderr)
        command = self.prog[len(PROG):].strip()
        self.exit(EXIT_ERROR, f"{PROG}: error: {command + ': ' if command else ''}{message}\n")


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Fills ``{methods}``, ``{options}``, ``{option:METHOD.NAME}`` and ``{devices}`` only when help is shown:
    listing them imports torch."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "{methods}" in text:
            from ..core.methods import method_names

            text = text.replace("{methods}", ", ".join(method_names(include_classic=False)))
        if "{options}" in text:
            text = text.replace("{options}", _method_options_text())
        text = re.sub(r"\{option:(\w+)\.(\w+)\}", lambda m: _option_text(*m.groups()), text)
        if "{devices}" in text:
            from ..core.nn.device import available_devices

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
    _config_flag(p, "method",
                 help="auto (the default: trains the classic filter and n2s, nnet, n2same, drops the worse "
                        "ones early by their self-supervised score and keeps the best; --option "
                        "candidates=n2s,nnet chooses them) or one of: {methods}")
    _config_flag(p, "axes", help="axes of the inputs, e.g. YX, ZYX, TYX, CYX (default: from the file)")
    budget = p.add_argument_group("budget (the first one reached ends training; none given: 2000 steps)")
    for name in ("steps", "epochs", "time_limit", "steps_per_epoch"):
        _config_flag(budget, name)
    p.add_argument("--from", dest="start_from", metavar="MODEL",
                   help="fine-tune: start from this model (.sdmodel, or a bioimage.io .zip exported by "
                        "napari-selfdenoise) and continue training it on INPUT; its method, network and "
                        "normalisation are kept, the budget counts the new steps")
    for name in ("patch", "patch_z", "batch", "accumulate", "lr", "lr_decay", "depth", "features", "z_levels",
                 "val_fraction", "seed"):
        _config_flag(p, name)
    _config_flag(p, "device", default=DEFAULTS["device"], help="auto (default) or one of: {devices}")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a method option, e.g. --option mask_fraction=0.01 (repeatable; values are JSON "
                        "when they parse as JSON). Every neural method has blind_radius=N (0-4): hide the "
                        "pixels within N of each blind spot, for noise shared by neighbouring pixels; nnet "
                        "has calibrate=false to keep the jointly trained noise model. The options and their "
                        "defaults: {options}")
    p.add_argument("--mixture", type=int, metavar="K",
                   help="nnet only, the same as --option mixture=K: {option:nnet.mixture}")
    _add_trust_code(p)
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)

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
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    big = p.add_argument_group(
        "big data (an output ending in .ome.zarr, or an input over 256 MB, is streamed block by block "
        "into the output file with bounded memory)")
    big.add_argument("--workers", type=int, metavar="N",
                     help="predict blocks on N local worker processes (dask.distributed; writes .ome.zarr)")
    big.add_argument("--dask-scheduler", metavar="ADDRESS",
                     help="predict blocks on a running dask.distributed cluster, e.g. tcp://node:8786 "
                          "(inputs, outputs and the model on a shared file system; writes .ome.zarr)")
    _add_trust_code(p)

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
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)

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

    # ---- noise
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
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)

    # ---- export
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
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)

    # ---- info
    p = commands.add_parser("info", parents=[common], formatter_class=_HelpFormatter,
                            help="describe a model file", description="Describe a model file or bioimage.io package.")
    p.add_argument("model", metavar="MODEL", help="model file (.sdmodel) or bioimage.io package (.zip)")
    _add_trust_code(p)
    return parser


def _config_flag(parser, name: str, **settings) -> None:
    """The option of the TrainConfig field ``name``: flag, type, metavar and help from its metadata
    (``settings`` add to them or replace them)."""
    f = CONFIG_FIELDS[name]
    meta = f.metadata
    kind = str(f.type).split(" |")[0]
    arguments = {"type": int if is_whole(f) else float if kind == "float" else None, "help": _config_help(f)}
    if meta["metavar"]:
        arguments["metavar"] = meta["metavar"]
    parser.add_argument(meta["flag"], **{**{k: v for k, v in arguments.items() if v is not None}, **settings})


def _config_help(f) -> str:
    """The field's help, then its range (where it has an upper bound), default and fine-tuning note."""
    notes = []
    if f.metadata["high"] is not None and f.metadata["high"] < 2**31:
        notes.append(range_text(f))
    if f.default is not None and f.default is not MISSING:
        notes.append(f"default {f.default:g}" if isinstance(f.default, float) else f"default {f.default}")
    if f.name in FROM_MODEL:
        notes.append("with --from: the model's")
    return f.metadata["help"] + (f" ({'; '.join(notes)})" if notes else "")


def _method_options_text() -> str:
    """Every registered method's options with their defaults (``n2s: grid=4, ...; n2v: ...``)."""
    from ..core.methods import METHODS

    def shown(value):
        return str(value).lower() if isinstance(value, bool) else str(value)

    return "; ".join(f"{name}: " + ", ".join(f"{o.name}={shown(o.default)}" for o in cls.option_specs)
                     for name, cls in METHODS.items() if cls.option_specs)


def _option_text(method: str, name: str) -> str:
    """One option's help, range and default, from its spec (``Option``)."""
    from ..core.methods import METHODS

    option = next(o for o in METHODS[method].option_specs if o.name == name)
    limits = option.range_text()
    return f"{option.help} ({limits + '; ' if limits else ''}default {option.default})"


def _add_trust_code(parser) -> None:
    parser.add_argument(
        "--trust-code", action="store_true",
        help="run the TorchScript weights of a foreign bioimage.io package: a program written by the "
             "package's author, which runs with your permissions (in a separate, memory-bounded process); "
             "only for packages whose author you trust (default: refused)")
