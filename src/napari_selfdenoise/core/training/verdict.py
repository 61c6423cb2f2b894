"""Is a trained result worth keeping? Its self-supervised score against the calibrated classical filter's.

A short budget on a busy CPU can end with a network that erases small structures (worse than a classical
filter) or that has barely learnt anything (its output is nearly the input). The front ends must not hand
such a result back as good, so after training they ask ``check_result``:
- the same J-invariant masked-pixel score the ``auto`` race uses (``scoring.HeldOut``: the network predicts
  each held-out pixel with that pixel hidden; lower is better, and it ranks results like the true error,
  Noise2Self) for the network and for the self-calibrated classical filter, on the same pixels;
- how much the network changes its input, relative to the noise: ``rms(f(x) - x) / noise std``, about 1
  for a denoiser that removes the noise, near 0 for one that hands the input back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..data.axes import make_layout
from ..steps import drain
from .auto import SHARED_NOISE_MARGIN, network_wins

UNCHANGED_BELOW = 0.3  # rms change under this fraction of the noise std: the result "barely differs"
WORSE_Z = 2.0  # the network's score is above the filter's by this many standard errors: "worse"


@dataclass
class Verdict:
    score: float  # the network's masked-pixel score (squared image units)
    classic_score: float  # the calibrated classical filter's, on the same pixels
    classic: dict  # {denoiser, parameter_name, parameter} of that filter
    change: float  # rms(result - input) / noise std on the held-out crops
    worse: bool  # clearly worse than the classical filter (with a blind radius: not clearly better)
    unchanged: bool  # barely differs from the input

    @property
    def good(self) -> bool:
        return not (self.worse or self.unchanged)

    def text(self) -> str:
        """One line for the status: what the scores say and what to do."""
        gap = 100 * (self.score / self.classic_score - 1) if self.classic_score > 0 else float("inf")
        filter_name = f"{self.classic['denoiser']} ({self.classic['parameter_name']} {self.classic['parameter']:.3g})"
        if self.worse and gap < 0:  # lower, by less than a network needs with a blind radius (auto.network_wins)
            return (f"Not clearly better than a classical filter: its self-supervised score is only {-gap:.1f} % "
                    f"better than {filter_name}'s, and with a blind radius the score favours networks (they need "
                    f"{100 * SHARED_NOISE_MARGIN:g} %). Use the classical result.")
        if self.worse:
            return (f"Not better than a classical filter: its self-supervised score is {gap:.0f} % worse than "
                    f"{filter_name}'s. Use the classical result, or train longer.")
        if self.unchanged:
            return (f"The result barely differs from the input (it changes {self.change:.0%} of the noise): "
                    "the network is under-trained. Use the classical result, or train longer.")
        better = f"{-gap:.0f} % better than" if gap < 0 else "as good as"
        return f"Self-supervised score {better} the classical filter {filter_name}."


def check_result(denoiser, image, axes: str | None = None):
    """Score ``denoiser`` (trained) against the classical filter calibrated on ``image``: a step generator
    (``steps.py``: yields (done, total)) that returns a ``Verdict``. Seconds on a CPU (small crops)."""
    from ..data.normalize import Normalization
    from ..methods.classic import DEFAULT_DENOISERS, calibration_steps
    from .quality import noise_variance_from_data
    from .scoring import HeldOut, classic_crop, classic_predictor, clearly_worse, network_predictor

    config = denoiser.config
    blind_radius = int(config.method_options.get("blind_radius", 0))
    source = make_layout(tuple(image.shape), axes or config.axes).to_canonical(image)
    dims = source.ndim - 2
    depth = config.depth
    multiple = (2**depth,) * 2 if dims == 2 else (_z_multiple(denoiser), 2**depth, 2**depth)
    yield 0, 3
    held = HeldOut.from_sources([source], config, multiple, blind_radius)
    network = network_predictor(denoiser)
    mine = held.evaluate(network)
    yield 1, 3
    crop = classic_crop(source)
    calibration = drain(calibration_steps(crop, "SCYX" if crop.ndim == 4 else "SCZYX", DEFAULT_DENOISERS,
                                          blind_radius=blind_radius))
    theirs = held.evaluate(classic_predictor(calibration, Normalization.fit(crop)))
    yield 2, 3
    variance, _ = noise_variance_from_data(held.crops)
    change = math.sqrt(np.mean([np.mean((np.asarray(network(c), np.float32) - c) ** 2) for c in held.crops]))
    relative = change / math.sqrt(variance) if variance > 0 else float("inf")
    yield 3, 3
    return Verdict(score=mine.score, classic_score=theirs.score,
                   classic={"denoiser": calibration.denoiser, "parameter_name": calibration.parameter_name,
                            "parameter": calibration.parameter},
                   change=relative, unchanged=relative < UNCHANGED_BELOW,
                   worse=clearly_worse(mine, theirs, WORSE_Z)
                   or (blind_radius > 0 and not network_wins(mine, theirs, blind_radius)))


def _z_multiple(denoiser) -> int:
    """What the network needs the Z edge of a crop to be a multiple of (Z is pooled z_levels times)."""
    levels = denoiser.architecture.get("z_levels")
    return 2 ** int(levels if levels is not None else denoiser.config.depth)


def checked_job(job, denoiser, image, axes: str | None = None):
    """Run a training ``job`` (``jobs.train_job``), then ``check_result``: the ``JobResult`` gets
    ``extra["verdict"]`` (progress as ``Stage("checking", ...)`` messages)."""
    from ..steps import staged

    result = yield from job
    if denoiser.trained:
        result.extra["verdict"] = yield from staged("checking", check_result(denoiser, image, axes))
    return result
