"""The no-ground-truth quality estimate of the ``auto`` winner: its score minus the mean noise variance.

The winner's score minus the mean noise variance estimates its mean squared error (Noise2Self, see
``scoring``), hence a PSNR. Noise variance: N-net's calibrated noise model when N-net won, else a robust
estimate from the data (``noise_variance_from_data``: PCA of small patches, Chen et al. 2015). Uncertainty: a
block bootstrap of the score minus the variance estimate (jointly, on the same pixels: their errors partly
cancel); with N-net's variance, the score's and the variance's standard errors combined, its disagreement
with the data's estimate counted as an error of it. The estimate is
"not reliable" when the error is not positive within two standard errors, or when the noise looks shared by
neighbouring pixels (its variance cannot then be measured from the image).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..methods.blind_radius import shared_noise_hint
from .scoring import Evaluation

BOOTSTRAP = 200
RELIABLE_Z = 2.0  # the estimated error must be above zero by this many standard errors
INTERVAL_Z = 2.0  # the stated PSNR interval: the estimated error +- this many standard errors


@dataclass
class QualityEstimate:
    """The winner's estimated error without ground truth (see the module's text)."""

    reliable: bool
    reason: str | None = None  # why it is not reliable
    mse: float | None = None  # estimated mean squared error, squared image units
    mse_stderr: float | None = None
    psnr: float | None = None  # dB, with ``peak``
    psnr_low: float | None = None  # the PSNR at mse + 2 stderr (about a 95 % interval)
    psnr_high: float | None = None  # at mse - 2 stderr (inf when that is <= 0)
    peak: float | None = None  # the range (max - min) of the winner's prediction on the held-out pixels
    noise_variance: float | None = None
    noise_variance_stderr: float | None = None
    noise_source: str | None = None  # "nnet" (its calibrated noise model) or "data"
    score: float | None = None

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> QualityEstimate:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def text(self) -> str:
        if not self.reliable:
            return f"not reliable ({self.reason})"
        plus = (self.psnr_high - self.psnr) if self.psnr_high is not None else float("inf")
        minus = self.psnr - self.psnr_low
        spread = f"±{max(plus, minus):.1f}" if math.isfinite(plus) else f"-{minus:.1f}/+inf"
        return (f"PSNR {self.psnr:.1f} {spread} dB (peak {self.peak:.4g}, the result's range), RMSE "
                f"{math.sqrt(self.mse):.4g}; noise std {math.sqrt(self.noise_variance):.4g} "
                f"(from {'N-net' if self.noise_source == 'nnet' else 'the data'})")


# --------------------------------------------------------------------------- noise variance

PCA_PATCH = 5  # patch edge of the PCA noise estimate (25 dimensions)
PCA_BLOCK = 32  # bootstrap blocks of patch positions, in pixels


def _noise_eigenvalue_mean(scatter: np.ndarray, total: np.ndarray, count: int) -> float:
    """Chen, Zhu & Heng (ICCV 2015): drop the largest eigenvalues of the patch covariance until the mean of
    the rest is no more than their median; that mean is the noise variance (independent noise adds it to
    every eigenvalue, and the signal lives in a few)."""
    covariance = (scatter - np.outer(total, total) / count) / (count - 1)
    eigenvalues = np.sort(np.linalg.eigvalsh(covariance))[::-1]
    for start in range(len(eigenvalues)):
        tail = eigenvalues[start:]
        if tail.mean() <= np.median(tail):
            return float(tail.mean())
    return float(eigenvalues[-1])


def _pca_blocks(crops: list[np.ndarray], errors: list[np.ndarray] | None = None) -> list[tuple]:
    """Per block of ``PCA_BLOCK`` x ``PCA_BLOCK`` patch positions of each Y-X plane: the patches' scatter
    matrix, sum and count, and (with ``errors``, the score's squared-error maps) the errors' sum and count."""
    blocks = []
    for k, crop in enumerate(crops):
        planes = crop.reshape(-1, *crop.shape[-2:]).astype(np.float64)
        error_planes = errors[k].reshape(-1, *crop.shape[-2:]) if errors is not None else [None] * len(planes)
        for plane, error in zip(planes, error_planes):
            windows = np.lib.stride_tricks.sliding_window_view(plane, (PCA_PATCH, PCA_PATCH))
            for y in range(0, windows.shape[0], PCA_BLOCK):
                for x in range(0, windows.shape[1], PCA_BLOCK):
                    patches = windows[y : y + PCA_BLOCK, x : x + PCA_BLOCK].reshape(-1, PCA_PATCH**2)
                    scored = (0.0, 0) if error is None else _finite_sum(error[y : y + PCA_BLOCK, x : x + PCA_BLOCK])
                    blocks.append((patches.T @ patches, patches.sum(axis=0), len(patches), *scored))
    return blocks


def _finite_sum(values: np.ndarray) -> tuple[float, int]:
    finite = values[np.isfinite(values)]
    return float(finite.sum()), int(finite.size)


def noise_variance_from_data(crops: list[np.ndarray], seed: int = 0, errors: list[np.ndarray] | None = None):
    """Mean noise variance of raw (1, C, ...) crops (PCA of their 5 x 5 patches in Y-X planes, see
    ``_noise_eigenvalue_mean``; signal-dependent noise gives its mean over the pixels) and its bootstrap
    standard error over blocks of patch positions. Texture that looks like noise biases it up.

    With ``errors`` (an ``Evaluation``'s maps on these crops) it also returns the standard error of the
    score minus the variance, bootstrapped jointly over the same blocks: both come from the same noise,
    so their errors partly cancel."""
    blocks = _pca_blocks(crops, errors)
    statistics = lambda chosen: tuple(sum(b[k] for b in chosen) for k in range(5))
    scatter, total, count, error_sum, error_count = statistics(blocks)
    variance = _noise_eigenvalue_mean(scatter, total, count)
    rng = np.random.default_rng(seed)
    variances, differences = [], []
    for _ in range(BOOTSTRAP // 2):
        scatter, total, count, error_sum, error_count = statistics(
            [blocks[i] for i in rng.integers(0, len(blocks), len(blocks))])
        variances.append(_noise_eigenvalue_mean(scatter, total, count))
        differences.append(error_sum / max(error_count, 1) - variances[-1])
    if errors is None:
        return variance, float(np.std(variances, ddof=1))
    return variance, float(np.std(variances, ddof=1)), float(np.std(differences, ddof=1))


def noise_variance_from_nnet(denoiser, crops: list[np.ndarray]) -> tuple[float, float]:
    """Mean noise variance that N-net's (calibrated) noise model predicts at the held-out pixels, and the
    standard error of that mean over blocks (the model's own error is not in it)."""
    from ..nn.networks import mixture_std

    network, normalization = denoiser.network, denoiser.normalization
    network.eval()
    device = next(network.parameters()).device
    values = []
    with torch.no_grad():
        for crop in crops:
            _, params = network(torch.from_numpy(normalization.apply(crop)).to(device))
            std = mixture_std(*params).float().cpu().numpy()
            scale = np.asarray(normalization.scale, np.float32).reshape((1, -1) + (1,) * (crop.ndim - 2))
            values.append(((std * scale) ** 2)[0])
    blocks = Evaluation(values, []).blocks()
    variance = float(np.mean(np.concatenate([v.ravel() for v in values])))
    return variance, float(blocks.std(ddof=1) / math.sqrt(len(blocks))) if len(blocks) > 1 else 0.0


def quality_estimate(evaluation: Evaluation, noise_variance: float, noise_stderr: float, source: str,
                     shared_noise: str | None = None, mse_stderr: float | None = None) -> QualityEstimate:
    """Noise2Self's estimate of the winner's error: its score minus the noise variance (see the module).
    ``mse_stderr``: the difference's standard error when known (a joint bootstrap), else the score's and the
    variance's combined as independent."""
    score, score_stderr = evaluation.score, evaluation.stderr
    mse = score - noise_variance
    stderr = mse_stderr if mse_stderr is not None else \
        math.sqrt((score_stderr if math.isfinite(score_stderr) else 0.0) ** 2 + noise_stderr**2)
    peak = evaluation.peak
    common = {"mse": mse, "mse_stderr": stderr, "peak": peak, "noise_variance": noise_variance,
              "noise_variance_stderr": noise_stderr, "noise_source": source, "score": score}
    if shared_noise:
        return QualityEstimate(False, "the noise looks shared by neighbouring pixels: its variance, which the "
                                      "estimate subtracts, cannot be measured from the image",
                               **common)
    if not mse > RELIABLE_Z * stderr:
        return QualityEstimate(False, "the loss minus the noise variance is not above zero within its "
                                      "uncertainty", **common)
    psnr = lambda m: 10 * math.log10(peak**2 / m) if m > 0 else float("inf")
    return QualityEstimate(True, None, psnr=psnr(mse), psnr_low=psnr(mse + INTERVAL_Z * stderr),
                           psnr_high=psnr(mse - INTERVAL_Z * stderr), **common)


def shared_noise_of(sources) -> str | None:
    """The shared-noise hint on the first input. A blind radius makes the score right again on such
    noise, but not the noise variance that the estimate subtracts (patch PCA assumes white noise: 0.11 of
    the truth on FMD's wide-field image), so the hint stands with any radius."""
    source = sources[0]
    axes = "SCYX" if source.ndim == 4 else "SCZYX"
    return shared_noise_hint(source, axes)
