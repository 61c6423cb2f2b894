"""The self-supervised score of the ``auto`` race and the result check: held-out pixels, each predictor's
J-invariant error on them, and the predictors (a network, the calibrated classical filter).

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
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..config import TrainConfig
from ..data.normalize import Normalization
from ..data.patches import split_regions
from ..errors import SelfDenoiseError
from ..methods.blind_radius import check_blind_radius, grid_spacing

SCORE_GRID = 4  # the grid of J for the score (widened for blind_radius)
SCORE_PHASES_3D = 16  # of the 64 phases of a 3D grid (a fixed subset, as in classic.py)
CROP_EDGE = {2: (256, 256), 3: (16, 128, 128)}  # at most this per held-out crop
MAX_CROPS = 4
BLOCK = {2: (16, 16), 3: (4, 16, 16)}  # bootstrap blocks (errors of neighbouring pixels are correlated)
CLEARLY_WORSE_Z = 3.0


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
