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


@dataclass
class TrainConfig:
    """Everything that decides how a model is trained. Units: pixels, steps, seconds."""

    # "auto": race the neural methods (and the classical filter) on the self-supervised score (core/auto.py)
    method: str = "auto"
    axes: str = "YX"
    # Patch edge in Y and X; ``patch_z`` is used by 3D (Z) models.
    patch: int = 64
    patch_z: int = 16
    # The global batch: with several processes (torchrun) and ``accumulate`` it is cut into
    # processes x accumulate equal shards, each from its own random stream (see core/distributed.py).
    # None: chosen for the device when training starts (16 on the CPU; on a GPU what fits, up to 128
    # patches of 64^2; see core/device.py), then kept here.
    batch: int | None = None
    # Gradient accumulation: shards per step in each process (less memory, the same step).
    accumulate: int = 1
    # Budget: the first one reached ends training. With none given, ``steps`` defaults to 2000.
    steps: int | None = None
    epochs: int | None = None
    time_limit: float | None = None
    steps_per_epoch: int = 100
    lr: float = 4e-4
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    # U-Net size.
    depth: int = 2
    features: int = 32
    # 3D only: how many of the ``depth`` poolings also halve Z; None = automatic (all of them with 8 or
    # more Z planes, none below: thin stacks, usually coarse in Z, pool only Y and X and train on all planes).
    z_levels: int | None = None
    # Fraction of the data held out for validation (whole samples when there are many).
    val_fraction: float = 0.1
    # Emit a noise-level curve (on a fixed validation crop) every this many steps; 0 turns it off.
    curve_every: int = 100
    # "auto" lets the method choose (percentile for most; mean/std for n2same, whose lambda assumes it).
    normalization: str = "auto"
    percentiles: tuple[float, float] = (0.5, 99.5)
    # Method-specific options (e.g. ``grid`` for n2s, ``mask_fraction`` for n2v); see each method.
    method_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        # The same checks for the API, the CLI, the widgets and model files: every value of the right type
        # and in range (a NaN learning rate or time limit would run for ever or train nothing).
        if not isinstance(self.method, str) or not isinstance(self.device, str):
            raise SelfDenoiseError("method and device must be names (strings)")
        self.axes = validate_axes(self.axes)
        for name in ("patch", "patch_z", "accumulate", "steps_per_epoch", "depth", "features") + \
                (("batch",) if self.batch is not None else ()):
            setattr(self, name, _integer(name, getattr(self, name), 1))
        for name in ("steps", "epochs"):
            if getattr(self, name) is not None:
                setattr(self, name, _integer(name, getattr(self, name), 1))
        self.seed = _integer("seed", self.seed, 0, 2**63 - 1, "a non-negative integer")
        self.curve_every = _integer("curve_every", self.curve_every, 0, what="a non-negative integer (0: off)")
        for name, high in (("depth", 6), ("features", 512)):
            if getattr(self, name) > high:
                raise SelfDenoiseError(f"{name} must be at most {high} (got {getattr(self, name)}); a larger "
                                       "network would not fit in memory")
        if self.z_levels is not None:
            self.z_levels = _integer("z_levels", self.z_levels, 0)
            if self.z_levels > self.depth:
                raise SelfDenoiseError(f"z_levels must be between 0 and depth ({self.depth}), or None (automatic)")
        if self.batch is not None and self.batch % self.accumulate:
            raise SelfDenoiseError(f"batch {self.batch} must be a multiple of accumulate {self.accumulate}")
        if self.time_limit is not None:
            self.time_limit = _positive("time_limit", self.time_limit, "a positive number of seconds")
        self.lr = _positive("lr", self.lr, "a positive number (the learning rate, e.g. 4e-4)")
        if not is_finite_number(self.val_fraction) or not 0 <= self.val_fraction < 1:
            raise SelfDenoiseError(f"val_fraction must be in [0, 1) (got {_shown(self.val_fraction)})")
        self.val_fraction = float(self.val_fraction)
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


def _integer(name: str, value, low: int, high: int | None = None, what: str = "a positive integer") -> int:
    """``value`` as an int when it is a whole number in [low, high]; else a one-line error naming ``name``."""
    if not is_finite_number(value) or value != int(value) or value < low or (high is not None and value > high):
        raise SelfDenoiseError(f"{name} must be {what} (got {_shown(value)})")
    return int(value)


def _positive(name: str, value, what: str) -> float:
    if not is_finite_number(value) or not value > 0:
        raise SelfDenoiseError(f"{name} must be {what} (got {_shown(value)})")
    return float(value)


def _shown(value) -> str:
    """A value for a message: short, and never an error itself (repr of a 5000-digit int raises)."""
    try:
        text = repr(value)
    except ValueError:
        return "a number too large to show"
    return text if len(text) <= 60 else text[:57] + "..."
