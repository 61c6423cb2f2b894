"""The learning-rate decay at the end of the budget (``lr_decay``), by steps and by time."""

import math

import pytest

from napari_selfdenoise.core.data.synthetic import add_noise, fluorescence_image
from napari_selfdenoise.core.denoiser import Denoiser
from napari_selfdenoise.core.errors import SelfDenoiseError
from napari_selfdenoise.core.training import trainer

LR = 1e-3
SMALL = dict(patch=32, batch=4, features=8, depth=1, steps_per_epoch=5, lr=LR, curve_every=0, seed=0)


def _image():
    return add_noise(fluorescence_image((64, 64), seed=3), "gaussian", sigma=0.1, seed=4)


def _rates(model) -> dict[int, float]:
    """The rate that each validated step (1, 2, ...) was taken with."""
    history = model.state.history
    return dict(zip(history["step"], history["lr"]))


def _cosine(into: float) -> float:
    return LR * 0.5 * (1 + math.cos(math.pi * into))


def test_rate_holds_then_falls_towards_zero_over_the_last_share_of_the_steps():
    model = Denoiser("n2v2", "YX", steps=40, lr_decay=0.5, **SMALL)
    list(model.train(_image()))
    rates = _rates(model)
    # step s is taken at (s - 1) / 40 of the budget: cosine from there over the second half
    for step in (5, 10, 15, 20):
        assert rates[step] == pytest.approx(LR)
    for step in (25, 30, 35, 40):
        assert rates[step] == pytest.approx(_cosine(((step - 1) / 40 - 0.5) / 0.5))
    assert 0 < rates[40] < 0.01 * LR  # the last step still learns


def test_without_decay_the_rate_stays():
    assert Denoiser().config.lr_decay == 0.5 and Denoiser().config.lr == LR  # the defaults
    model = Denoiser("n2v2", "YX", steps=20, lr_decay=0.0, **SMALL)
    list(model.train(_image()))
    assert set(_rates(model).values()) == {LR}


def test_a_resumed_run_starts_from_the_rate_before_the_decay():
    model = Denoiser("n2v2", "YX", steps=20, lr_decay=0.5, **SMALL)
    list(model.train(_image()))
    saved = model.state.optimizer["param_groups"]
    assert all(group["lr"] == LR and "decay_peak" not in group for group in saved)
    list(model.train(_image()))  # fine-tuning: 20 steps more, decayed again over their second half
    rates = _rates(model)
    assert rates[25] == pytest.approx(LR) and rates[30] == pytest.approx(LR)
    assert rates[40] == pytest.approx(_cosine(((40 - 1 - 20) / 20 - 0.5) / 0.5))


def test_under_a_time_limit_the_rate_falls_over_the_last_share_of_the_time(monkeypatch):
    """Time made deterministic: every training step takes 1 s of the trainer's clock."""
    now = {"t": 0.0}
    accumulate = trainer.Trainer._accumulate

    def timed(self, *args):
        now["t"] += 1.0
        return accumulate(self, *args)

    monkeypatch.setattr(trainer, "clock", lambda: now["t"])
    monkeypatch.setattr(trainer.Trainer, "_accumulate", timed)
    model = Denoiser("n2v2", "YX", time_limit=40, lr_decay=0.25, **SMALL)
    list(model.train(_image()))
    rates = _rates(model)
    assert model.state.step == 40  # the step that ends at 40 s ends the run
    assert rates[30] == pytest.approx(LR)
    for step in (35, 40):  # taken at (step - 1) s: decaying from 30 s
        assert rates[step] == pytest.approx(_cosine((step - 1 - 30) / 10))


@pytest.mark.parametrize("share", [-0.1, 1.5, float("nan")])
def test_bad_decay_share(share):
    with pytest.raises(SelfDenoiseError, match="lr_decay"):
        Denoiser("n2v2", "YX", steps=10, lr_decay=share)


def test_auto_decays_the_winner_over_the_end_of_the_whole_budget():
    """A candidate scored at a rung trains on from its rate; the winner's rate falls over the last quarter
    of its 160 steps (the rung at 50, the floor), and the model keeps the user's share."""
    model = Denoiser("auto", "YX", steps=160, lr_decay=0.25, method_options={"candidates": ["n2s", "n2same"]},
                     **SMALL)
    list(model.train(_image()))
    rates = _rates(model)
    assert model.state.step == 160 and model.config.lr_decay == 0.25
    for step in (5, 50, 55, 100, 120):
        assert rates[step] == pytest.approx(LR)
    for step in (140, 160):  # decaying from step 121 (taken at 120 of 160)
        assert rates[step] == pytest.approx(_cosine((step - 121) / 40))
