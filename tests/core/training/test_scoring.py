"""The self-supervised score on held-out pixels (core/training/scoring.py): it ranks like the true error,
equals it plus the noise variance, and never looks at the scored pixel."""

from __future__ import annotations

import numpy as np
from scored_scene import SIGMA, gaussian, held_out, true_mse

from napari_selfdenoise.core.training.scoring import clearly_worse


def test_score_ranks_like_the_true_error_and_is_it_plus_the_noise_variance(scene):
    clean, noisy = scene
    held = held_out(noisy)
    evaluations = [held.evaluate(gaussian(s)) for s in (0.5, 1.0, 2.0, 4.0)]
    scores = [e.score for e in evaluations]
    truths = [true_mse(e, clean) for e in evaluations]
    assert np.argsort(scores).tolist() == np.argsort(truths).tolist()
    # Noise2Self: score = true error + noise variance (up to sampling noise, a few standard errors)
    for evaluation, truth in zip(evaluations, truths):
        assert abs(evaluation.score - SIGMA**2 - truth) < 4 * evaluation.stderr + 2e-4
    # the over-smoothing filter is clearly worse than the best, the best is not clearly worse than itself
    best = evaluations[int(np.argmin(scores))]
    assert clearly_worse(evaluations[3], best) and not clearly_worse(best, best)


def test_every_pixel_is_scored_once_and_only_from_its_neighbours(scene):
    _, noisy = scene
    held = held_out(noisy)
    leaks = []

    def identity(hidden):  # the "denoiser" that returns its input: J-invariant only through the hiding
        leaks.append(hidden)
        return hidden

    evaluation = held.evaluate(identity)
    assert np.isfinite(evaluation.errors[0]).all()  # all phases together cover every pixel
    # it scored the neighbour mean, not the pixel itself (which would give a score of 0)
    assert evaluation.score > 0.5 * SIGMA**2
