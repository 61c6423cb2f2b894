"""Method "auto": the race, its plan and options, the record in the model file (the score: test_scoring.py,
the quality estimate: test_quality.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scored_scene import SIGMA

from napari_selfdenoise.core import jobs
from napari_selfdenoise.core.config import TrainConfig
from napari_selfdenoise.core.data.synthetic import add_noise
from napari_selfdenoise.core.denoiser import Denoiser
from napari_selfdenoise.core.errors import SelfDenoiseError
from napari_selfdenoise.core.methods import METHODS
from napari_selfdenoise.core.methods.masking import masked_mse
from napari_selfdenoise.core.methods.n2s import Noise2Self
from napari_selfdenoise.core.training import auto
from napari_selfdenoise.core.training.auto import CLASSIC, rung_fractions, rung_steps, split_options
from napari_selfdenoise.core.training.trainer import ProgressEvent


def test_default_method_is_auto():
    assert TrainConfig().method == "auto" and Denoiser().config.method == "auto"
    assert Denoiser().method is None  # a method only once the race has chosen it


def test_rungs_and_options():
    assert rung_fractions(2) == [0.25] and rung_fractions(3) == [0.125, 0.25] and rung_fractions(1) == []
    assert [rung_steps(f, 2000) for f in (0.125, 0.25, 1)] == [250, 500, 2000]
    assert rung_steps(0.125, 40) == 20  # the floor (at most half the budget)
    per = split_options({"candidates": ["n2s", "nnet"], "mixture": 2, "blind_radius": 1, "n2s": {"grid": 5}},
                        ("n2s", "nnet"))
    assert per == {"n2s": {"blind_radius": 1, "grid": 5}, "nnet": {"mixture": 2, "blind_radius": 1}}
    with pytest.raises(SelfDenoiseError, match="no option nope"):
        Denoiser("auto", method_options={"nope": 1})
    with pytest.raises(SelfDenoiseError, match="candidates"):
        Denoiser("auto", method_options={"candidates": ["n2s", "bogus"]})


class Shifted(Noise2Self):
    """A candidate crippled on purpose: it learns to predict the pixel four to the right."""

    name = "shifted"

    def training_loss(self, net, batch, gen):
        from napari_selfdenoise.core.methods.masking import grid_mask, replace_with_donut_mean

        mask = grid_mask((batch.shape[0], *batch.shape[2:]), 4, gen, batch.device)
        return masked_mse(net(replace_with_donut_mean(batch, mask)), torch.roll(batch, 4, dims=-1), mask)


def test_race_drops_the_crippled_candidate_and_records_the_winner(scene, monkeypatch, tmp_path):
    clean, noisy = scene
    monkeypatch.setitem(METHODS, "shifted", Shifted)
    model = Denoiser("auto", "YX", steps=120, patch=32, batch=8, features=8, lr=2e-3, steps_per_epoch=40,
                     curve_every=0, method_options={"candidates": ["n2s", "shifted"]})
    messages = list_job(jobs.auto_job(model, noisy, preview=jobs.preview_region(noisy.shape, "YX", size=64)))
    events = [m for m in messages if isinstance(m, ProgressEvent)]
    # the classic filter first, with its preview straight after
    assert "classic" in events[0].extra and isinstance(messages[1], jobs.Stage)
    assert isinstance(messages[2], jobs.Preview) and messages[2].step == 0
    assert all("scores" in e.extra for e in events)
    assert sum(e.done for e in events) == 1 and events[-1].done
    rows = {row.method: row for row in model.auto.scores}
    rung = rung_steps(rung_fractions(2)[0], 120)
    assert rows["shifted"].status == "dropped" and rows["shifted"].steps == rung
    assert rows["n2s"].steps == 120 and rows["n2s"].score < rows["shifted"].score
    assert model.config.method == "n2s" and model.state.step == 120 and model.config.steps == 120
    assert model.auto.winner in ("n2s", CLASSIC) and rows[model.auto.winner].status == "winner"
    # the live table showed shifted dropped before the end
    live = [next(r for r in e.extra["scores"] if r["method"] == "shifted")["status"] for e in events]
    assert "dropped" in live[:-1]
    # the model file keeps the record; prediction applies the winner
    result = messages[-1] if isinstance(messages[-1], jobs.JobResult) else None
    model.save(tmp_path / "m.sdmodel")
    loaded = Denoiser.load(tmp_path / "m.sdmodel")
    assert loaded.auto.to_dict() == model.auto.to_dict() and loaded.config.method == "n2s"
    np.testing.assert_allclose(loaded.predict(noisy), model.predict(noisy), atol=1e-5)
    assert result is None or result.extra["auto"] is model.auto
    mse = float(np.mean((model.predict(noisy) - clean) ** 2))
    assert mse < 0.5 * SIGMA**2  # it denoises


def list_job(job):
    """Every message of a job, and its JobResult last."""
    messages = []
    while True:
        try:
            messages.append(next(job))
        except StopIteration as end:
            messages.append(end.value)
            return messages


def test_stop_ends_the_race_with_the_best_so_far(scene):
    _, noisy = scene
    model = Denoiser("auto", "YX", steps=400, patch=32, batch=4, features=8, curve_every=0,
                     method_options={"candidates": ["n2s", "n2same"]})
    for event in model.train(noisy):
        if event.extra.get("candidate") == "n2same" and event.step >= 60:
            model.stop()
    assert event.done and event.stopped and model.auto is not None
    assert model.state.step < 400 and model.config.method in ("n2s", "n2same")
    assert auto.AutoResult.from_dict(model.auto.to_dict()).winner == model.auto.winner


def test_auto_hides_a_blind_radius_when_the_noise_is_shared(scene):
    """Blind radius 0 (the default) lets auto decide: on noise shared by neighbouring pixels the classical
    filter, every candidate and the score hide a radius-2 square, and a note says so; independent noise
    keeps radius 0. One candidate (no rung to race at) trains the whole budget."""
    clean, noisy = scene
    shared = add_noise(clean, "shared_gaussian", sigma=SIGMA, seed=5).astype(np.float32)
    radii = {}
    for name, image in (("shared", shared), ("independent", noisy)):
        model = Denoiser("auto", "YX", steps=60, patch=32, batch=4, features=8, curve_every=0,
                         method_options={"candidates": ["n2s"]})
        events = list(model.train(image))
        notes = events[-1].extra["notes"]
        assert model.state.step == 60
        radii[name] = (model.config.method_options.get("blind_radius", 0), model.auto.classic["blind_radius"],
                       any("blind radius of 2" in n for n in notes))
        assert not model.auto.estimate.reliable or name == "independent"
    assert radii == {"shared": (2, 2, True), "independent": (0, 0, False)}


def evaluation_scoring(value: float):
    """An Evaluation whose score is ``value`` (every scored pixel's squared error)."""
    from napari_selfdenoise.core.training.scoring import Evaluation

    return Evaluation([np.full((1, 32, 32), value, np.float32)], [np.zeros((1, 32, 32), np.float32)])


def test_with_a_blind_radius_a_network_needs_a_margin_over_the_classic_filter():
    """On shared noise the score favours networks (they also learn the noise shared beyond the blind
    radius): there a network replaces the classical filter only with a score lower by the margin, and the
    note says why the filter was kept."""
    from types import SimpleNamespace

    classic = evaluation_scoring(100.0)
    near = evaluation_scoring(100.0 * (1 - auto.SHARED_NOISE_MARGIN / 2))
    far = evaluation_scoring(100.0 * (1 - 2 * auto.SHARED_NOISE_MARGIN))
    assert auto.network_wins(near, classic, blind_radius=0) and auto.network_wins(far, classic, blind_radius=0)
    assert not auto.network_wins(near, classic, blind_radius=2) and auto.network_wins(far, classic, blind_radius=1)
    assert not auto.network_wins(classic, classic, blind_radius=0)
    calibration = SimpleNamespace(denoiser="tv", parameter_name="weight", parameter=0.2)
    note = auto.classic_kept_note(calibration, "n2s", {CLASSIC: classic, "n2s": near})
    assert f"n2s scored {50 * auto.SHARED_NOISE_MARGIN:.1f} % below the classical filter (tv, weight 0.2)" in note
    assert "blind radius" in note
    assert "scored best" in auto.classic_kept_note(calibration, "n2s", {CLASSIC: near, "n2s": classic})


def test_the_result_check_asks_the_same_margin_with_a_blind_radius(scene, monkeypatch):
    """A trained network whose score is a little below the classical filter's is "not clearly better" with
    a blind radius, and fine without one."""
    from napari_selfdenoise.core.steps import drain
    from napari_selfdenoise.core.training import scoring, verdict

    _, noisy = scene
    model = Denoiser("n2s", "YX", steps=2, patch=32, batch=2, features=8, curve_every=0)
    model.fit(noisy)
    evaluate = scoring.HeldOut.evaluate

    def classic_scores_higher(held, predict):  # the network's prediction scores 2 % below the filter's
        evaluate(held, predict)  # the predictor runs as it would
        return evaluation_scoring(98.0 if predict.__qualname__.startswith("network_predictor") else 100.0)

    monkeypatch.setattr(scoring.HeldOut, "evaluate", classic_scores_higher)
    for radius, worse in ((0, False), (2, True)):
        model.config.method_options["blind_radius"] = radius
        found = drain(verdict.check_result(model, noisy))
        assert found.worse is worse and found.score < found.classic_score
        assert ("Not clearly better" in found.text()) is worse
