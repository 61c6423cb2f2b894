"""One configuration object shared by the GUI, the CLI, the Python API and model files."""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from dataclasses import dataclass, field
from typing import Any

from .data.axes import validate_axes
from .errors import SelfDenoiseError


def setting(default=None, help: str = "", *, low: float | None = None, high: float | None = None,
            low_open: bool = False, high_open: bool = False, flag: str | None = None, metavar: str | None = None,
            factory=None):
    """A ``TrainConfig`` field with what every front end says about it: ``help`` (one phrase, lower case),
    the allowed range (``low``/``high`` inclusive, or exclusive with ``low_open``/``high_open``; checked by
    ``__post_init__`` for int and float fields), and ``flag``: the ``selfdenoise train`` option built from it
    (cli/parser.py), with its ``metavar``."""
    metadata = {"help": help, "low": low, "high": high, "low_open": low_open, "high_open": high_open,
                "flag": flag, "metavar": metavar}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    """Everything that decides how a model is trained. Units: pixels, steps, seconds.

    Each field's help, range and command-line flag are in its metadata (``setting``); the CLI's help,
    the checks below and the Train widget's controls read them from there.
    """

    # "auto": race the neural methods (and the classical filter) on the self-supervised score (core/training/auto.py)
    method: str = setting("auto", "auto (race the methods on the self-supervised score, keep the best) or a "
                                  "registered method", flag="--method", metavar="METHOD")
    axes: str = setting("YX", "axes of the images, e.g. YX, ZYX, TYX, CYX", flag="--axes")
    # Patch edge in Y and X; ``patch_z`` is used by 3D (Z) models.
    patch: int = setting(64, "patch size in Y and X, a multiple of 2**depth", low=1, flag="--patch")
    patch_z: int = setting(16, "patch size in Z, for 3D", low=1, flag="--patch-z")
    # The global batch: with several processes (torchrun) and ``accumulate`` it is cut into
    # processes x accumulate equal shards, each from its own random stream (see core/training/distributed.py).
    # None: chosen for the device when training starts (16 on the CPU; on a GPU what fits, up to 128
    # patches of 64^2; see core/nn/device.py), then kept here.
    batch: int | None = setting(
        None, "patches per step, in all; under torchrun each of N processes trains on batch/N of them (a "
              "multiple of N x accumulate). Default: 16 on the CPU, on a GPU the largest power of two up to 128 "
              "that fits in half its free memory", low=1, flag="--batch")
    # Gradient accumulation: shards per step in each process (less memory, the same step).
    accumulate: int = setting(
        1, "gradient accumulation: each process splits its share of the batch into K micro-batches, for less "
           "memory; N processes x K is what decides the random draws, so accumulate 2 in one process "
           "reproduces 2 processes", low=1, flag="--accumulate", metavar="K")
    # Budget: the first one reached ends training. With none given, ``steps`` defaults to 2000.
    steps: int | None = setting(None, "training steps", low=1, flag="--steps")
    epochs: int | None = setting(None, "epochs (of steps-per-epoch steps)", low=1, flag="--epochs")
    time_limit: float | None = setting(None, "wall-clock limit in seconds", low=0, low_open=True, flag="--time-limit",
                                       metavar="SECONDS")
    steps_per_epoch: int = setting(100, "steps between validations", low=1, flag="--steps-per-epoch")
    # Measured on B1 (BENCHMARKS.md, "Learning rate"): 1e-3 falling to 0 over the second half of the budget
    # beats a constant 4e-4 by 0.2-0.3 dB at 10 CPU minutes; a constant rate leaves the weights noisy.
    lr: float = setting(1e-3, "peak learning rate of Adam", low=0, low_open=True, flag="--lr")
    lr_decay: float = setting(0.5, "share of the budget (steps or time) at its end over which the learning rate "
                                   "falls to 0 (cosine); 0: constant, halved on validation plateaus",
                              low=0, high=1, flag="--lr-decay", metavar="SHARE")
    seed: int = setting(0, "random seed: the same seed, the same result", low=0, high=2**63 - 1, flag="--seed")
    device: str = setting("auto", "auto (a GPU when there is one) or a torch device", flag="--device")
    amp: bool = setting(True, "mixed precision on GPUs")
    # U-Net size.
    depth: int = setting(2, "U-Net poolings", low=1, high=6, flag="--depth")
    features: int = setting(32, "U-Net channels at the top level", low=1, high=512, flag="--features")
    # 3D only: how many of the ``depth`` poolings also halve Z; None = automatic (all of them with 8 or
    # more Z planes, none below: thin stacks, usually coarse in Z, pool only Y and X and train on all planes).
    z_levels: int | None = setting(
        None, "3D: how many of the depth poolings also halve Z (default: all of them for stacks of 8 or more Z "
              "planes, none for thinner ones, which pool only Y and X and train on all their planes)",
        low=0, flag="--z-levels", metavar="N")
    # Fraction of the data held out for validation (whole samples when there are many).
    val_fraction: float = setting(0.1, "fraction held out for validation", low=0, high=1, high_open=True,
                                  flag="--val-fraction")
    # Emit a noise-level curve (on a fixed validation crop) every this many steps; 0 turns it off.
    curve_every: int = setting(100, "steps between noise-level curves for live plots (0: off)", low=0)
    # "auto" lets the method choose (percentile for most; mean/std for n2same, whose lambda assumes it).
    normalization: str = setting("auto", "auto (the method's choice), percentile or meanstd")
    percentiles: tuple[float, float] = setting((0.5, 99.5), "the percentiles that map to 0 and 1 (percentile "
                                                            "normalisation)")
    # Method-specific options (e.g. ``grid`` for n2s, ``mask_fraction`` for n2v); see each method.
    method_options: dict[str, Any] = setting(  # noqa: RUF009 (setting returns a field with a default_factory)
        help="the method's own options (each method's option_specs)", factory=dict)

    def __post_init__(self):
        # The same checks for the API, the CLI, the widgets and model files: every value of the right type
        # and in range (a NaN learning rate or time limit would run for ever or train nothing).
        if not isinstance(self.method, str) or not isinstance(self.device, str):
            raise SelfDenoiseError("method and device must be names (strings)")
        self.axes = validate_axes(self.axes)
        for f in dataclasses.fields(self):
            if f.metadata.get("low") is not None and getattr(self, f.name) is not None:
                setattr(self, f.name, _in_range(f, getattr(self, f.name)))
        if self.z_levels is not None and self.z_levels > self.depth:
            raise SelfDenoiseError(f"z_levels must be between 0 and depth ({self.depth}), or None (automatic)")
        if self.batch is not None and self.batch % self.accumulate:
            raise SelfDenoiseError(f"batch {self.batch} must be a multiple of accumulate {self.accumulate}")
        if not isinstance(self.amp, bool):
            raise SelfDenoiseError("amp must be true or false")
        if self.normalization not in ("auto", "percentile", "meanstd"):
            raise SelfDenoiseError("normalization must be 'auto', 'percentile' or 'meanstd'")
        try:
            percentiles = tuple(self.percentiles)
        except TypeError:
            percentiles = ()
        if not (len(percentiles) == 2 and all(is_finite_number(p) for p in percentiles)
                and 0 <= percentiles[0] < percentiles[1] <= 100):
            raise SelfDenoiseError(f"percentiles must be two numbers 0 <= low < high <= 100 (got {_shown(self.percentiles)})")
        self.percentiles = tuple(float(p) for p in percentiles)
        if not isinstance(self.method_options, dict):
            raise SelfDenoiseError("method_options must be a mapping of option names to values")
        if self.patch % (2**self.depth):
            raise SelfDenoiseError(
                f"patch {self.patch} must be a multiple of {2**self.depth} (2**depth)"
            )

    @property
    def max_steps(self) -> int | None:
        """The step budget (``epochs`` converted), or ``None`` when only wall time limits it."""
        budgets = [b for b in (self.steps,) if b is not None]
        if self.epochs is not None:
            budgets.append(self.epochs * self.steps_per_epoch)
        if budgets:
            return min(budgets)
        return None if self.time_limit is not None else 2000

    def lr_text(self) -> str:
        """The learning rate and its schedule, for people (info, model cards)."""
        decay = f", falling to 0 over the last {self.lr_decay:.0%} of the budget" if self.lr_decay else ""
        return f"{self.lr:g}{decay}"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["percentiles"] = list(self.percentiles)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        if not isinstance(data, dict):
            raise SelfDenoiseError("a training configuration must be a mapping of names to values")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(f"ignoring unknown config entries: {', '.join(unknown)}", stacklevel=2)
        return cls(**{k: v for k, v in data.items() if k in known})


def is_finite_number(value) -> bool:
    """A finite real number (bools are not numbers here; a bigint is refused, it has no float). The one
    check for numbers from users and from files (model headers, rdf.yaml)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    if isinstance(value, numbers.Integral):
        return abs(int(value)) < 2**63  # math.isfinite cannot convert a bigint to a float
    return math.isfinite(value)


def _in_range(f: dataclasses.Field, value):
    """``value`` of the field ``f`` as its type (int or float) when it is in the field's range; else a
    one-line error that names the field and the range."""
    meta = f.metadata
    whole = is_whole(f)
    fits = is_finite_number(value) and (value == int(value) if whole else True)
    fits = fits and (value > meta["low"] if meta["low_open"] else value >= meta["low"])
    if fits and meta["high"] is not None:
        fits = value < meta["high"] if meta["high_open"] else value <= meta["high"]
    if not fits:
        raise SelfDenoiseError(f"{f.name} must be {range_text(f)} (got {_shown(value)})")
    return int(value) if whole else float(value)


def range_text(f: dataclasses.Field) -> str:
    """A field's range in words: "a positive integer", "an integer from 1 to 6", "in [0, 1)", ..."""
    meta = f.metadata
    low, high = meta["low"], meta["high"]
    if is_whole(f):
        if high is not None and high < 2**31:  # the seed's 2**63 - 1 would only distract
            return f"an integer from {low} to {high}"
        return "a positive integer" if low >= 1 else "a non-negative integer"
    if high is None:
        return "a positive number" if low == 0 and meta["low_open"] else f"a number of at least {low:g}"
    return f"in {'(' if meta['low_open'] else '['}{low:g}, {high:g}{')' if meta['high_open'] else ']'}"


def is_whole(f: dataclasses.Field) -> bool:
    """An int field (``int`` or ``int | None``; the annotations are strings here)."""
    return str(f.type).split(" |")[0] == "int"


def _shown(value) -> str:
    """A value for a message: short, and never an error itself (repr of a 5000-digit int raises)."""
    try:
        text = repr(value)
    except ValueError:
        return "a number too large to show"
    return text if len(text) <= 60 else text[:57] + "..."
