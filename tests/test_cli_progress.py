"""The command line's progress bars (issue 16): N-net's finishing stage, the noise calibration, shows its
progress as done/total on a bar of its own, not only its name. In-process (``cli.app.main``) so that the
trainer's clock can be made deterministic as in tests/core/training/test_finish_budget.py: every likelihood
evaluation and blind-spot pass "takes" 1 s."""

from __future__ import annotations

import re

import pytest
import tifffile

from napari_selfdenoise.cli.app import main
from napari_selfdenoise.core.data.synthetic import add_noise, fluorescence_image


@pytest.fixture
def fake_time(monkeypatch):
    from napari_selfdenoise.core.methods import nnet
    from napari_selfdenoise.core.training import trainer

    now = {"t": 0.0}

    def advancing(work):
        def timed(*args, **kwargs):
            now["t"] += 1.0
            return work(*args, **kwargs)
        return timed

    monkeypatch.setattr(trainer, "clock", lambda: now["t"])
    monkeypatch.setattr(nnet, "mixture_nll", advancing(nnet.mixture_nll))
    monkeypatch.setattr(nnet, "blind_spot_signal", advancing(nnet.blind_spot_signal))
    return now


def test_the_noise_calibration_shows_done_of_total(tmp_path, capsys, fake_time):
    image = add_noise(fluorescence_image((64, 64), seed=3), "gaussian", sigma=0.1, seed=4)
    tifffile.imwrite(tmp_path / "in.tif", image)
    code = main(["train", str(tmp_path / "in.tif"), "--method", "nnet", "--time-limit", "40", "--patch", "32",
                 "--batch", "4", "--features", "8", "--depth", "1", "--out", str(tmp_path / "m.sdmodel")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "noise model calibrated" in out and "shortened to fit the time limit" in out, out
    # its own bar, named after the stage, counting steps: "calibrating the noise model:  40%|####  | 12/30 [...]"
    shown = re.findall(r"calibrating the noise model: +\d+%\|[^|]*\| (\d+)/(\d+) \[", err)
    assert shown, err[-2000:]
    assert all(0 <= int(done) <= int(total) for done, total in shown), shown
    # the calibration re-planned its work to fit the time left, and the bar says so
    assert any(0 < int(done) and int(total) < int(shown[0][1]) for done, total in shown), shown
