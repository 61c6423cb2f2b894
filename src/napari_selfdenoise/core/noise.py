"""Noise-level curves: how noisy the data is as a function of signal, for every method.

Empirical: the std and skewness of (noisy - denoised) in bins of the denoised signal. Predicted (N-net):
the mean predicted noise std in the same bins. Both in the input's units, ready for a plot or a CSV.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class NoiseCurve:
    signal: list[float]  # bin centres (mean denoised signal in the bin)
    std: list[float]  # empirical std of noisy - denoised
    skewness: list[float]
    count: list[int]
    predicted_std: list[float] | None = None  # N-net's prediction, where available
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def write_csv(self, path) -> Path:
        path = Path(path)
        columns = ["signal", "std", "skewness", "count"] + (["predicted_std"] if self.predicted_std else [])
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            for row in zip(*(getattr(self, c) for c in columns)):
                writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])
        return path


def noise_curve(noisy, denoised, predicted_std=None, bins: int = 10, percentiles=(5, 95)) -> NoiseCurve:
    """Bin pixels by denoised signal (equal-width bins between the given percentiles)."""
    signal = np.asarray(denoised, np.float64).ravel()
    residual = np.asarray(noisy, np.float64).ravel() - signal
    predicted = None if predicted_std is None else np.asarray(predicted_std, np.float64).ravel()
    low, high = np.percentile(signal, percentiles)
    if not high > low:
        high = low + 1e-6
    edges = np.linspace(low, high, bins + 1)
    which = np.clip(np.digitize(signal, edges) - 1, 0, bins - 1)
    inside = (signal >= low) & (signal <= high)
    curve = NoiseCurve([], [], [], [], [] if predicted is not None else None)
    for b in range(bins):
        sel = inside & (which == b)
        n = int(sel.sum())
        if n < 3:
            continue
        r = residual[sel]
        std = float(r.std())
        curve.signal.append(float(signal[sel].mean()))
        curve.std.append(std)
        curve.skewness.append(float(((r - r.mean()) ** 3).mean() / std**3) if std > 0 else 0.0)
        curve.count.append(n)
        if predicted is not None:
            curve.predicted_std.append(float(predicted[sel].mean()))
    return curve
