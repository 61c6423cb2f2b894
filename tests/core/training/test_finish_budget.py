"""N-net's finishing step (the noise calibration) counts in the time limit.

Time is made deterministic: the trainer's clock is replaced by a counter that the work itself advances
(every likelihood evaluation, i.e. a training step, a validation pass or a refit iteration, "takes" 1 s, every
blind-spot pass of the bootstrap 1 s), so the assertions are on what was done, never on a real clock.
"""

import copy

import numpy as np
import pytest
import torch

from napari_selfdenoise.core.data.synthetic import add_noise, fluorescence_image
from napari_selfdenoise.core.denoiser import Denoiser
from napari_selfdenoise.core.methods import nnet
from napari_selfdenoise.core.nn.networks import NNet
from napari_selfdenoise.core.training import trainer

# A constant rate (lr_decay 0): after a decayed one, on this tiny net, the calibration did not improve the
# fit and was not kept, and its note (read below for the work done) then says only that.
SMALL = dict(patch=32, batch=8, features=8, depth=1, steps_per_epoch=1000, lr=2e-3, lr_decay=0.0, curve_every=0,
             seed=0, method_options={"noise_features": 16})


@pytest.fixture
def fake_time(monkeypatch):
    """The trainer's clock, advanced by the work: returns a dict with the time and the calls counted."""
    now = {"t": 0.0, "likelihoods": 0, "blind_spot_passes": 0}
    likelihood, blind_spot = nnet.mixture_nll, nnet.blind_spot_signal

    def timed_likelihood(*args, **kwargs):
        now["t"] += 1.0
        now["likelihoods"] += 1
        return likelihood(*args, **kwargs)

    def timed_blind_spot(*args, **kwargs):
        now["t"] += 1.0
        now["blind_spot_passes"] += 1
        return blind_spot(*args, **kwargs)

    monkeypatch.setattr(trainer, "clock", lambda: now["t"])
    monkeypatch.setattr(nnet, "mixture_nll", timed_likelihood)
    monkeypatch.setattr(nnet, "blind_spot_signal", timed_blind_spot)
    return now


def _image():
    return add_noise(fluorescence_image((64, 64), seed=3), "gaussian", sigma=0.1, seed=4)


def test_training_and_the_noise_calibration_end_within_the_time_limit(fake_time):
    limit = 100.0
    model = Denoiser("nnet", "YX", time_limit=limit, **SMALL)
    events = list(model.train(_image()))
    final = events[-1]
    assert final.done and not final.stopped
    # Training left the calibration its reserve (FINISH_SHARE of the limit here: 60 steps of 1 s cost more)
    # and used the rest: with 1 s steps it ended at 100 - 20 s.
    assert final.step == int(limit * (1 - trainer.FINISH_SHARE))
    # The whole run (steps, validation, calibration) ends within the limit, plus at most one refit
    # iteration and the final loss evaluation (today's code: the full 8 chunks and 500 iterations, ~600 s).
    assert final.elapsed <= limit + 2, f"the run took {final.elapsed:.0f} s of a {limit:.0f} s limit"
    assert model.state.elapsed == final.elapsed
    # The calibration was shortened to fit, not skipped: some bootstrap chunks, some refit iterations.
    note = next(n for n in final.extra["notes"] if "noise" in n)
    assert "calibrated" in note and "shortened to fit the time limit" in note, note
    chunks = fake_time["blind_spot_passes"] // 2  # two blind-spot passes per chunk
    assert 1 <= chunks < trainer.FINISH_PATCHES // 8
    assert f"{chunks}/8 bootstrap chunks" in note
    iterations = int(note.split("chunks, ")[1].split("/")[0])
    assert 1 <= iterations < nnet.CALIBRATION_ITERATIONS
    # Progress of the finishing stage: announced, then (done, total) up to done == total, before the end.
    staged = [e for e in events if "stage" in e.extra]
    assert staged and "stage_progress" not in staged[0].extra
    progress = [e.extra["stage_progress"] for e in staged[1:]]
    assert progress and all(0 < done <= total for done, total in progress)
    assert progress[-1][0] == progress[-1][1] == chunks + iterations
    assert [e.elapsed for e in events] == sorted(e.elapsed for e in events)
    assert events.index(staged[-1]) == len(events) - 2


def test_a_run_over_its_time_limit_keeps_the_trained_noise_head(fake_time):
    """A step that takes the whole limit leaves no time: the calibration is skipped, with a note."""
    model = Denoiser("nnet", "YX", time_limit=0.5, **SMALL)
    events = list(model.train(_image()))
    assert events[-1].step == 1
    assert fake_time["blind_spot_passes"] == 0
    assert any("no time was left for the noise calibration" in n for n in events[-1].extra["notes"])


def _calibrated(net, patches, **kwargs):
    net = copy.deepcopy(net)
    note = nnet.calibrate_noise_head(net, patches, torch.Generator().manual_seed(3), **kwargs)
    return net.state_dict(), note


def test_calibration_with_time_to_spare_is_the_full_calibration_bit_for_bit():
    """A time limit that is not reached changes nothing: same chunks, same 500 iterations, same weights."""
    torch.manual_seed(0)
    net = NNet(in_channels=1, dims=2, depth=1, features=8, noise_features=16)
    patches = torch.from_numpy(np.random.default_rng(0).random((16, 1, 32, 32), dtype=np.float32))
    unlimited, note = _calibrated(net, patches)
    limited, limited_note = _calibrated(net, patches, time_left=lambda: 1e9)
    assert note == limited_note and "shortened" not in note
    assert all(torch.equal(unlimited[k], limited[k]) for k in unlimited)
    untouched, skipped = _calibrated(net, patches, time_left=lambda: 0.0)
    assert "no time was left" in skipped
    assert all(torch.equal(untouched[k], net.state_dict()[k]) for k in untouched)
