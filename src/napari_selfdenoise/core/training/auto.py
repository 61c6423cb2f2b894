"""The ``auto`` method: race the candidates on one self-supervised score, keep the best, estimate its quality.

Score (Batson & Royer, Noise2Self, ICML 2019). For any J-invariant predictor f (the prediction of a pixel
never looks at that pixel's noise) and noise independent between pixels,
``E mean((f(x) - x)^2) = E mean((f(x) - s)^2) + mean noise variance``: the masked-pixel loss is the true
error plus a constant, so it ranks predictors as the true error does, with no clean image. Every candidate
(the calibrated classical filter too) is scored on the SAME held-out pixels (``HeldOut``: crops of the
validation regions that no network trained on): for each phase of a 4-periodic grid the phase's pixels are
hidden (replaced by the mean of their neighbours, or the ``blind_radius`` squares by the mean of the visible
pixels around them, as in training), the candidate predicts, and its prediction at the hidden pixels is
compared with the noisy values. The score is therefore the one of each candidate's J-invariant predictor,
also for methods whose full-image inference sees the pixel (n2s, n2same; N-net's plain network output is
used, not a posterior that would look at the pixel). Units: squared image units.

Racing (successive halving). In "budget units" (one unit = the user's step budget, or the share of the
time limit left after the classic filter that fits the plan): every candidate trains to the first rung
(1/8 of a unit with 3-4 candidates), is scored, the clearly worse ones (paired difference more than
``CLEARLY_WORSE_Z`` standard errors) and the worst half are dropped; the survivors go on to the next rung
(1/4), and the last one left gets the rest of the unit. With a step budget the winner trains exactly the
budget (three candidates cost 1.375 budgets in all); with a time limit the whole race fits in it.

Quality estimate: the winner's score minus the mean noise variance estimates its mean squared error
(Noise2Self), hence a PSNR. Noise variance: N-net's calibrated noise model when N-net won, else a robust
estimate from the data (``noise_variance_from_data``: PCA of small patches, Chen et al. 2015). Uncertainty: a
block bootstrap of the score minus the variance estimate (jointly, on the same pixels: their errors partly
cancel); with N-net's variance, the score's and the variance's standard errors combined, its disagreement
with the data's estimate counted as an error of it. The estimate is
"not reliable" when the error is not positive within two standard errors, or when the noise looks shared by
neighbouring pixels (its variance cannot then be measured from the image).

Shared noise. Blind radius 0 (the default) lets auto decide: when the noise looks shared by neighbouring
pixels (``shared_noise_ratio``), the classical filter, every candidate and the score hide squares of radius
``SHARED_NOISE_RADIUS`` around each masked pixel (with 0 the loss takes shared noise for signal), and a
note says so.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..config import TrainConfig
from ..data.normalize import Normalization
from ..data.patches import split_regions
from ..errors import SelfDenoiseError
from ..methods.blind_radius import check_blind_radius, grid_spacing, shared_noise_hint, shared_noise_ratio
from ..methods.options import BLIND_RADIUS, MethodChoice

AUTO = "auto"
CLASSIC = "classic"
DEFAULT_CANDIDATES = ("n2s", "nnet", "n2same")
SCORE_GRID = 4  # the grid of J for the score (widened for blind_radius)
SCORE_PHASES_3D = 16  # of the 64 phases of a 3D grid (a fixed subset, as in classic.py)
CROP_EDGE = {2: (256, 256), 3: (16, 128, 128)}  # at most this per held-out crop
MAX_CROPS = 4
BLOCK = {2: (16, 16), 3: (4, 16, 16)}  # bootstrap blocks (errors of neighbouring pixels are correlated)
CLEARLY_WORSE_Z = 3.0
BOOTSTRAP = 200
RELIABLE_Z = 2.0  # the estimated error must be above zero by this many standard errors
INTERVAL_Z = 2.0  # the stated PSNR interval: the estimated error +- this many standard errors

# Networks score far worse than no denoising at all for their first few dozen steps: no rung before this
# many steps (or half the budget, when that is less).
MIN_RUNG_STEPS = 50

# Blind radius 0 (the default) lets auto decide: this radius when the noise looks shared by neighbouring
# pixels. With 0 the loss takes shared noise for signal: on FMD's wide-field image (neighbour correlation
# 0.6) auto ended 0.8 dB BELOW its input, where radius 2 gains 7-8 dB (BENCHMARKS.md, B2).
SHARED_NOISE_RADIUS = 2

# Options of the auto method itself; every other option goes to each candidate that has it, and an option
# named after a candidate, with a mapping as its value, gives that candidate's own options.
AUTO_OPTIONS = ("candidates",)
# The method picker's entry; of the options, the widget shows the one every candidate shares.
CHOICE = MethodChoice(AUTO, f"Auto (recommended): a classical filter first, then {', '.join(DEFAULT_CANDIDATES[:-1])} "
                            f"and {DEFAULT_CANDIDATES[-1]} raced on one self-supervised score within the budget; "
                            "the best is kept", (BLIND_RADIUS,))


# --------------------------------------------------------------------------- records


@dataclass
class CandidateScore:
    """One row of the score table: ``status`` is "running", "dropped" or "winner"."""

    method: str
    score: float | None = None  # the masked-pixel loss on the held-out pixels, squared image units
    stderr: float | None = None
    steps: int = 0
    status: str = "running"
    elapsed: float = 0.0  # seconds spent on this candidate

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CandidateScore:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


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


@dataclass
class AutoResult:
    """What ``auto`` chose and why: stored in the model file under "auto", shown by ``info``."""

    winner: str
    scores: list[CandidateScore]
    estimate: QualityEstimate | None = None
    # The classical filter (denoiser, parameter_name, parameter, normalization): applied when it won.
    classic: dict | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"winner": self.winner, "scores": [s.to_dict() for s in self.scores],
                "estimate": self.estimate.to_dict() if self.estimate else None, "classic": self.classic,
                "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, data: dict) -> AutoResult:
        estimate = data.get("estimate")
        return cls(str(data["winner"]), [CandidateScore.from_dict(s) for s in data.get("scores", [])],
                   QualityEstimate.from_dict(estimate) if estimate else None, data.get("classic"),
                   list(data.get("notes", [])))

    def table(self) -> str:
        """The score table as text lines (CLI summary, ``info``)."""
        best = min((s.score for s in self.scores if s.score is not None), default=None)
        lines = []
        for row in self.scores:
            score = "-" if row.score is None else f"{row.score:.5g}"
            if row.score is not None and row.stderr:
                score += f" ± {row.stderr:.2g}"
            gap = f" (+{100 * (row.score / best - 1):.1f} %)" if row.score is not None and best and \
                row.score > best else ""
            steps = f"{row.steps} steps" if row.method != CLASSIC else "calibrated"
            lines.append(f"{row.method:<8} {score}{gap}, {steps}, {row.status}")
        return "\n".join(lines)


def table_dicts(rows: list[CandidateScore]) -> list[dict]:
    """The live score table of an event: ``event.extra["scores"]``."""
    return [row.to_dict() for row in rows]


# --------------------------------------------------------------------------- options and plan


def split_options(options: dict, candidates) -> dict[str, dict]:
    """Each candidate's method options from the auto options (``candidates`` removed); an option that
    no candidate has is a mistake."""
    from ..methods import METHODS

    own = {k: v for k, v in options.items() if k in candidates and isinstance(v, dict)}
    shared = {k: v for k, v in options.items() if k not in AUTO_OPTIONS and k not in own}
    per = {name: {**{k: v for k, v in shared.items() if k in METHODS[name].defaults}, **own.get(name, {})}
           for name in candidates}
    unknown = sorted(k for k in shared if not any(k in METHODS[n].defaults for n in candidates))
    if unknown:
        raise SelfDenoiseError(f"method 'auto' has no option {', '.join(unknown)} (none of its candidates "
                               f"{', '.join(candidates)} has it); its own option is candidates, and "
                               f"NAME={{...}} gives one candidate's options")
    return per


def check_candidates(options: dict) -> tuple[str, ...]:
    from ..methods import METHODS

    names = options.get("candidates", DEFAULT_CANDIDATES)
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = tuple(dict.fromkeys(str(n) for n in names))
    bad = [n for n in names if n not in METHODS]
    if not names or bad:
        raise SelfDenoiseError(f"auto option candidates must name neural methods ({', '.join(METHODS)}); "
                               f"got {', '.join(bad) or 'none'}")
    return names


def rung_fractions(count: int) -> list[float]:
    """Cumulative budget fractions at which candidates are compared: the last at 1/4, each earlier one
    half the next, one rung per halving (2 candidates: [1/4]; 3-4: [1/8, 1/4]; 5-8: [1/16, 1/8, 1/4])."""
    rungs = max(1, math.ceil(math.log2(count))) if count > 1 else 0
    return [0.25 / 2 ** (rungs - 1 - r) for r in range(rungs)]


def planned_units(count: int) -> float:
    """Budget units the race costs when it halves as planned (the winner's own unit included)."""
    total, alive, previous = 0.0, count, 0.0
    for fraction in rung_fractions(count):
        total += alive * (fraction - previous)
        alive, previous = math.ceil(alive / 2), fraction
    return total + (1.0 - previous)


def rung_steps(fraction: float, budget: int) -> int:
    """The step count a candidate has trained at budget ``fraction`` (1: the whole budget): a rung is at
    least ``MIN_RUNG_STEPS`` steps (at most half the budget)."""
    if fraction >= 1:
        return budget
    return min(max(round(fraction * budget), MIN_RUNG_STEPS), max(1, budget // 2))


def planned_steps(count: int, budget: int) -> int:
    """Steps of all candidates together when the race halves as planned."""
    total, alive, previous = 0, count, 0
    for fraction in rung_fractions(count):
        target = rung_steps(fraction, budget)
        total += alive * (target - previous)
        alive, previous = math.ceil(alive / 2), target
    return total + budget - previous


# --------------------------------------------------------------------------- the held-out pixels


class HeldOut:
    """Crops (raw units, canonical (1, C, [Z,] Y, X)) of the validation regions, and the J-invariant
    scoring of any predictor on them."""

    def __init__(self, crops: list[np.ndarray], blind_radius: int = 0):
        if not crops:
            raise SelfDenoiseError("no held-out pixels to score the candidates on")
        self.crops = crops
        self.blind_radius = check_blind_radius(blind_radius)
        self.spacing = grid_spacing(SCORE_GRID, self.blind_radius)
        dims = crops[0].ndim - 2
        phases = [tuple(p) for p in np.ndindex(*(self.spacing,) * dims)]
        if dims == 3 and len(phases) > SCORE_PHASES_3D:
            picks = np.random.default_rng(0).choice(len(phases), SCORE_PHASES_3D, replace=False)
            phases = [phases[i] for i in sorted(picks)]
        self.phases = phases

    @classmethod
    def from_sources(cls, sources, config: TrainConfig, multiple: tuple[int, ...], blind_radius: int = 0):
        """Crops of the validation regions the Trainer holds out with ``config`` (the same split), each a
        multiple of ``multiple`` ([Z,] Y, X) in size; the whole data when nothing is held out."""
        dims = sources[0].ndim - 2
        patch_shape = (config.patch,) * 2
        if dims == 3:
            planes = min(s.shape[2] for s in sources)
            patch_shape = (max(multiple[0], min(config.patch_z, planes) // multiple[0] * multiple[0]), *patch_shape)
        _, val, _ = split_regions(sources, patch_shape, config.val_fraction)
        boxes = [(r.source, sample, r.bounds) for r in val for sample in r.samples]
        picks = np.unique(np.linspace(0, len(boxes) - 1, min(MAX_CROPS, len(boxes))).round().astype(int))
        crops = []
        for source, sample, bounds in (boxes[i] for i in picks):
            window = []
            for (start, stop), edge, m in zip(bounds, CROP_EDGE[dims], multiple):
                size = max(m, min(stop - start, edge) // m * m)
                size = min(size, stop - start)
                offset = start + (stop - start - size) // 2
                window.append(slice(offset, offset + size))
            crop = np.asarray(sources[source][(slice(sample, sample + 1), slice(None), *window)], np.float32)
            crops.append(np.ascontiguousarray(crop))
        return cls(crops, blind_radius)

    def masks(self, crop: torch.Tensor):
        from ..methods.masking import phase_grid_mask

        for phase in self.phases:
            yield phase_grid_mask(crop, phase, self.spacing)

    def hidden(self, crop: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``crop`` with the pixels of ``mask`` hidden, as the networks are trained to see them (the hiding
        is a mean of neighbours: it commutes with each candidate's own affine normalisation)."""
        from ..methods.masking import hide_blind_spots, replace_with_donut_mean

        return hide_blind_spots(crop, mask, self.blind_radius, replace_with_donut_mean)

    def evaluate(self, predict: Callable[[np.ndarray], np.ndarray]) -> Evaluation:
        """Score ``predict`` (raw (P, C, ...) hidden crops -> raw denoised, same shape): per crop, the
        squared error map of its J-invariant prediction at every scored pixel, and the prediction."""
        errors, predictions = [], []
        for crop in self.crops:
            x = torch.from_numpy(crop)
            masks = list(self.masks(x))
            hidden = torch.cat([self.hidden(x, m) for m in masks]).numpy()
            predicted = np.asarray(predict(hidden), np.float32)
            prediction = np.full(crop.shape[1:], np.nan, np.float32)
            for mask, values in zip(masks, predicted):
                where = mask[0].numpy()
                prediction[:, where] = values[:, where]
            scored = ~np.isnan(prediction[0])
            errors.append(np.where(scored, (prediction - crop[0]) ** 2, np.nan))
            predictions.append(prediction)
        return Evaluation(errors, predictions)


@dataclass
class Evaluation:
    errors: list[np.ndarray]  # per crop (C, [Z,] Y, X): squared error, NaN where not scored
    predictions: list[np.ndarray]

    def blocks(self) -> np.ndarray:
        """Mean squared error per bootstrap block (blocks with no scored pixel left out)."""
        means = []
        for error in self.errors:
            block = BLOCK[error.ndim - 1]
            spatial = error.shape[1:]
            for corner in np.ndindex(*[max(1, -(-s // b)) for s, b in zip(spatial, block)]):
                box = tuple(slice(c * b, (c + 1) * b) for c, b in zip(corner, block))
                values = error[(slice(None), *box)]
                if np.isfinite(values).any():
                    means.append(float(np.nanmean(values)))
        return np.asarray(means)

    @property
    def score(self) -> float:
        return float(np.nanmean(np.concatenate([e.ravel() for e in self.errors])))

    @property
    def stderr(self) -> float:
        blocks = self.blocks()
        return float(blocks.std(ddof=1) / math.sqrt(len(blocks))) if len(blocks) > 1 else float("nan")

    @property
    def peak(self) -> float:
        values = np.concatenate([p[np.isfinite(p)] for p in self.predictions])
        return float(values.max() - values.min()) if values.size else float("nan")


def clearly_worse(candidate: Evaluation, best: Evaluation, z: float = CLEARLY_WORSE_Z) -> bool:
    """Whether ``candidate``'s score is above ``best``'s by more than ``z`` standard errors of their paired
    (same pixels, same blocks) difference."""
    difference = candidate.blocks() - best.blocks()
    if len(difference) < 2:
        return False
    stderr = difference.std(ddof=1) / math.sqrt(len(difference))
    return float(difference.mean()) > z * max(float(stderr), 1e-12 * abs(best.score))


# --------------------------------------------------------------------------- predictors


def network_predictor(denoiser) -> Callable[[np.ndarray], np.ndarray]:
    """The raw network's denoised output (N-net: its signal, no posterior), raw units in and out."""

    def predict(hidden: np.ndarray) -> np.ndarray:
        network, normalization = denoiser.network, denoiser.normalization
        network.eval()
        device = next(network.parameters()).device
        with torch.no_grad():
            x = torch.from_numpy(normalization.apply(hidden)).to(device)
            out = network(x)
            signal = out[0] if isinstance(out, tuple) else out[:, : hidden.shape[1]]
            return normalization.invert(signal.float().cpu().numpy())

    return predict


def classic_predictor(calibration, normalization: Normalization) -> Callable[[np.ndarray], np.ndarray]:
    """The calibrated classical filter applied to each hidden crop, in its normalised units."""
    from ..methods.classic import denoise_classic

    def predict(hidden: np.ndarray) -> np.ndarray:
        axes = "SCYX" if hidden.ndim == 4 else "SCZYX"
        return denoise_classic(hidden, axes, calibration.denoiser, calibration.parameter, normalization)

    return predict


def classic_crop(source) -> np.ndarray:
    """What the classical filter is calibrated on: the first sample of ``source`` (canonical), its central
    512 x 512 (2D) or 32 x 256 x 256 (3D) pixels at most, so a huge lazy input is never read whole."""
    spatial = source.shape[2:]
    edges = (512, 512) if len(spatial) == 2 else (32, 256, 256)
    window = tuple(slice((s - min(s, e)) // 2, (s - min(s, e)) // 2 + min(s, e)) for s, e in zip(spatial, edges))
    return np.ascontiguousarray(np.asarray(source[(slice(0, 1), slice(None), *window)], np.float32))


# --------------------------------------------------------------------------- noise variance, estimate

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


# --------------------------------------------------------------------------- the race


class Race:
    """Trains the candidates of ``config`` (method "auto") on canonical ``sources`` by successive halving.

    ``run()`` is a generator of ``ProgressEvent``s (the auto event conventions: see ``Denoiser.train``) and
    returns the ``AutoResult``; ``self.winner`` is then the winning neural candidate (a ``Denoiser``; the
    best neural one when the classical filter won).
    """

    def __init__(self, config: TrainConfig, arrays, new_candidate: Callable[..., Any]):
        # new_candidate(config=...) makes a candidate: the Denoiser class, passed in so that this module
        # does not import denoiser.py (which imports this one).
        self.config = config
        options = dict(config.method_options)
        self.names = check_candidates(options)
        per = split_options(options, self.names)
        self.blind_radius = check_blind_radius(options.get("blind_radius", 0))
        self.candidates = {}
        for name in self.names:
            candidate_config = TrainConfig.from_dict({**config.to_dict(), "method": name,
                                                      "method_options": per[name]})
            self.candidates[name] = new_candidate(config=candidate_config)  # checks each one's options
        self.arrays, self.new_candidate = arrays, new_candidate
        self.current = None  # the candidate training now (previews use it)
        self.winner = None
        self._stop = False
        self.rows = {name: CandidateScore(name) for name in (CLASSIC, *self.names)}

    def stop(self):
        self._stop = True
        if self.current is not None:
            self.current.stop()

    def _events(self, name, start_step, plan_steps):
        """Train candidate ``name`` for its current slice; re-yield its events as auto events (not done:
        only the race's last event is). Returns the steps trained."""
        candidate, row = self.candidates[name], self.rows[name]
        self.current = candidate
        first, spent = candidate.state.step, self.spent
        for event in candidate.train(self.arrays):
            row.steps = candidate.state.step
            self.notes += [n for n in event.extra.get("notes", []) if event.done]
            extra = {**event.extra, "candidate": name, "scores": table_dicts(list(self.rows.values()))}
            extra.pop("notes", None)
            yield self._timed(dataclasses.replace(event, step=start_step + candidate.state.step - first,
                                                  max_steps=plan_steps, done=False, stopped=False, extra=extra))
            self._resume()
            if self._stop:
                candidate.stop()
        row.elapsed += self.spent - spent
        return candidate.state.step - first

    @property
    def spent(self) -> float:
        """Seconds spent inside ``run`` (a paused consumer costs nothing, as in the Trainer)."""
        return self._spent + time.perf_counter() - self._since

    def _timed(self, event):
        """Stamp ``event`` with the race's clock; the clock stops until the consumer asks for more."""
        self._spent = self.spent
        event.elapsed = self._spent
        self._since = float("inf")  # set again by _resume() when run() goes on
        return event

    def _resume(self):
        self._since = time.perf_counter()

    def run(self):
        from ..methods import get_method
        from ..methods.classic import DEFAULT_DENOISERS, calibration_steps
        from ..steps import drain
        from .trainer import ProgressEvent

        config = self.config
        self._spent, self._since, self.notes = 0.0, time.perf_counter(), []
        sources = [layout.to_canonical(a) for layout, a in self.arrays_layouts()]
        self._choose_blind_radius(sources)
        # the same held-out pixels for all: the Trainer's validation split, on the networks' size grid
        held = HeldOut.from_sources(sources, config, self._multiple(sources), self.blind_radius)

        # 1. the classical filter: seconds, the first result
        crop = classic_crop(sources[0])
        axes = "SCYX" if crop.ndim == 4 else "SCZYX"
        calibration = drain(calibration_steps(crop, axes, DEFAULT_DENOISERS, blind_radius=self.blind_radius))
        classic_norm = Normalization.fit(crop)
        evaluations = {CLASSIC: held.evaluate(classic_predictor(calibration, classic_norm))}
        self._score(CLASSIC, evaluations[CLASSIC])
        classic = {"denoiser": calibration.denoiser, "parameter_name": calibration.parameter_name,
                   "parameter": calibration.parameter, "normalization": classic_norm.to_dict(),
                   "blind_radius": self.blind_radius}
        units = planned_units(len(self.names))
        step_unit = config.max_steps
        plan_steps = planned_steps(len(self.names), step_unit) if step_unit else None
        time_unit = None if config.time_limit is None else max(config.time_limit - self.spent, 1e-3) / units
        yield self._timed(ProgressEvent(
            step=0, max_steps=plan_steps, epoch=0, train_loss=float("nan"), val_loss=None, best_val_loss=None,
            lr=config.lr, elapsed=0.0, patches_per_second=0.0,
            extra={"candidate": CLASSIC, "classic": calibration, "classic_options": classic,
                   "scores": table_dicts(list(self.rows.values()))}))
        self._resume()

        # 2. successive halving: train every survivor to the rung, score, drop
        rungs = rung_fractions(len(self.names))
        alive, done_steps, previous = list(self.names), 0, 0.0
        for number, fraction in enumerate(rungs):
            for name in alive:
                candidate = self.candidates[name]
                if candidate.method.finishing:  # N-net calibrates its noise model once, as the winner
                    candidate.method = get_method(name, {**candidate.config.method_options, "calibrate": False})
                if self._set_slice(candidate, previous, fraction, step_unit, time_unit):
                    done_steps += yield from self._events(name, done_steps, plan_steps)
                evaluations[name] = held.evaluate(network_predictor(candidate))
                self._score(name, evaluations[name])
                if self._stop:
                    break
            if self._stop:
                break
            alive = self._drop([n for n in alive if n in evaluations],
                               evaluations, 1 if number == len(rungs) - 1 else math.ceil(len(alive) / 2))
            previous = fraction
        # 3. the best survivor (stopped: the best scored so far) gets the rest of the budget
        scored = [n for n in alive if n in evaluations]
        if len(self.names) == 1:  # one candidate: no rung, it trains the whole budget
            winner_name = self.names[0]
        elif scored:
            winner_name = min(scored, key=lambda n: evaluations[n].score)
        else:  # stopped before any network was scored: the one that trained
            winner_name = next((n for n in self.names if self.candidates[n].network is not None), self.names[0])
        winner = self.candidates[winner_name]
        winner.method = get_method(winner_name, winner.config.method_options)
        if not self._stop and self._set_slice(winner, previous, 1.0, step_unit, time_unit, config.time_limit):
            done_steps += yield from self._events(winner_name, done_steps, plan_steps)
        if winner.network is None:
            raise SelfDenoiseError("training was stopped before any network was built")
        evaluations[winner_name] = held.evaluate(network_predictor(winner))  # as it ends (stopped: as it is)
        self._score(winner_name, evaluations[winner_name])
        self.winner = winner
        best = CLASSIC if evaluations[CLASSIC].score < evaluations[winner_name].score else winner_name
        for name, row in self.rows.items():
            row.status = "winner" if name == best else "dropped"
        notes = [] if best != CLASSIC else [
            (f"the classical filter ({calibration.denoiser}, {calibration.parameter_name} "
             f"{calibration.parameter:g}) scored best: the model applies it ({winner_name}'s network is kept too)")]
        estimate = self._estimate(best, evaluations[best], held, sources)
        result = AutoResult(best, list(self.rows.values()), estimate, classic, notes)
        self.result, self.current = result, None
        history = winner.history
        yield self._timed(ProgressEvent(
            step=done_steps, max_steps=plan_steps, epoch=winner.state.step // config.steps_per_epoch,
            train_loss=history["train_loss"][-1] if history["train_loss"] else float("nan"),
            val_loss=winner.state.best_val_loss, best_val_loss=winner.state.best_val_loss, lr=config.lr,
            elapsed=0.0, patches_per_second=0.0, done=True, stopped=self._stop,
            extra={"candidate": best, "scores": table_dicts(result.scores), "auto": result,
                   "notes": [*self.notes, *notes]}))
        return result

    # ---- helpers of run()
    def arrays_layouts(self):
        from ..data.checks import check_same_axes_shape

        layouts = check_same_axes_shape(self.arrays, self.config.axes)
        return list(zip(layouts, self.arrays))

    def _choose_blind_radius(self, sources) -> None:
        """Blind radius 0 means "decide from the data": when the noise looks shared by neighbouring pixels,
        the classical filter, every candidate and the score hide squares of ``SHARED_NOISE_RADIUS``."""
        if self.blind_radius:
            return
        source = sources[0]
        ratio = shared_noise_ratio(source, "SCYX" if source.ndim == 4 else "SCZYX")
        if ratio is None:
            return
        self.blind_radius = SHARED_NOISE_RADIUS
        for name, candidate in self.candidates.items():
            options = {**candidate.config.method_options, "blind_radius": SHARED_NOISE_RADIUS}
            self.candidates[name] = self.new_candidate(
                config=TrainConfig.from_dict({**candidate.config.to_dict(), "method_options": options}))
        self.notes.append(f"the noise looks shared by neighbouring pixels (neighbour-difference ratio {ratio:.2f}; "
                          f"independent noise gives about 0.85-1): every method hid a blind radius of "
                          f"{SHARED_NOISE_RADIUS} around each masked pixel (set blind_radius to choose it yourself)")

    def _multiple(self, sources) -> tuple[int, ...]:
        """What the candidates' networks need each crop edge to be a multiple of ([Z,] Y, X)."""
        from ..nn.networks import auto_z_levels

        depth = self.config.depth
        if sources[0].ndim == 4:
            return (2**depth, 2**depth)
        planes = min(s.shape[2] for s in sources)
        levels = auto_z_levels(planes, depth) if self.config.z_levels is None else int(self.config.z_levels)
        return (2**levels, 2**depth, 2**depth)

    def _set_slice(self, candidate, start: float, end: float, step_unit, time_unit, total_time=None) -> bool:
        """Budget the next ``candidate.train`` call from budget fraction ``start`` to ``end`` (a resumed run
        trains for its budget again); ``total_time`` (the winner's last slice): the time left of it.
        False when there is nothing to train (the rung floor put two rungs at one step count)."""
        steps = None
        if step_unit is not None:
            steps = rung_steps(end, step_unit) - candidate.state.step
            if steps < 1:
                return False
        seconds = None if time_unit is None else max(1e-3, (end - start) * time_unit)
        if total_time is not None:
            seconds = total_time - self.spent
            if seconds <= 0:  # the rungs (and scoring them) used the whole time limit
                return False
        candidate.config.steps, candidate.config.epochs, candidate.config.time_limit = steps, None, seconds
        return True

    def _score(self, name, evaluation: Evaluation):
        self.rows[name].score, self.rows[name].stderr = evaluation.score, evaluation.stderr
        if name != CLASSIC:
            self.rows[name].steps = self.candidates[name].state.step

    def _drop(self, alive, evaluations, keep: int) -> list[str]:
        ranked = sorted(alive, key=lambda n: evaluations[n].score)
        best = evaluations[ranked[0]]
        survivors = [n for n in ranked[:keep] if n == ranked[0] or not clearly_worse(evaluations[n], best)]
        for name in alive:
            if name not in survivors:
                self.rows[name].status = "dropped"
        if self.rows[CLASSIC].status == "running" and clearly_worse(evaluations[CLASSIC], best):
            self.rows[CLASSIC].status = "dropped"
        return survivors

    def _estimate(self, best, evaluation, held, sources) -> QualityEstimate:
        """The winner's quality estimate; the noise variance from N-net's calibrated model when it won."""
        shared = shared_noise_of(sources)
        variance, stderr, mse_stderr = noise_variance_from_data(held.crops, errors=evaluation.errors)
        if best == "nnet" and self.winner.method.finishing and self.rows["nnet"].steps > 0:
            learned, learned_stderr = noise_variance_from_nnet(self.winner, held.crops)
            # how far the two estimates disagree counts as an error of the learned one (a short run's
            # noise model can be tens of percent off)
            stderr = math.sqrt(learned_stderr**2 + (learned - variance) ** 2)
            return quality_estimate(evaluation, learned, stderr, "nnet", shared,
                                    math.sqrt(evaluation.stderr**2 + stderr**2))
        return quality_estimate(evaluation, variance, stderr, "data", shared, mse_stderr)
