"""One configuration object shared by the GUI, the CLI, the Python API and model files."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any

from .axes import validate_axes
from .errors import SelfDenoiseError


@dataclass
class TrainConfig:
    """Everything that decides how a model is trained. Units: pixels, steps, seconds."""

    method: str = "n2v2"
    axes: str = "YX"
    # Patch edge in Y and X; ``patch_z`` is used by 3D (Z) models.
    patch: int = 64
    patch_z: int = 16
    # The global batch: with several processes (torchrun) and ``accumulate`` it is cut into
    # processes x accumulate equal shards, each from its own random stream (see core/distributed.py).
    batch: int = 16
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
        self.axes = validate_axes(self.axes)
        self.percentiles = tuple(float(p) for p in self.percentiles)
        for name in ("patch", "patch_z", "batch", "accumulate", "steps_per_epoch", "depth", "features"):
            if int(getattr(self, name)) < 1:
                raise SelfDenoiseError(f"{name} must be a positive integer")
        for name in ("steps", "epochs"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise SelfDenoiseError(f"{name} must be a positive integer")
        if self.z_levels is not None and not 0 <= int(self.z_levels) <= int(self.depth):
            raise SelfDenoiseError(f"z_levels must be between 0 and depth ({self.depth}), or None (automatic)")
        if self.batch % self.accumulate:
            raise SelfDenoiseError(f"batch {self.batch} must be a multiple of accumulate {self.accumulate}")
        if self.time_limit is not None and self.time_limit <= 0:
            raise SelfDenoiseError("time_limit must be a positive number of seconds")
        if not 0 <= self.val_fraction < 1:
            raise SelfDenoiseError("val_fraction must be in [0, 1)")
        if self.normalization not in ("auto", "percentile", "meanstd"):
            raise SelfDenoiseError("normalization must be 'auto', 'percentile' or 'meanstd'")
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
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(f"ignoring unknown config entries: {', '.join(unknown)}", stacklevel=2)
        return cls(**{k: v for k, v in data.items() if k in known})
