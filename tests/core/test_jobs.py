"""Engine jobs (core.jobs): the generators the widgets run in their worker threads."""

from __future__ import annotations

import numpy as np
import pytest

from napari_selfdenoise.core import jobs
from napari_selfdenoise.core.data.synthetic import add_noise, fluorescence_image
from napari_selfdenoise.core.denoiser import Denoiser
from napari_selfdenoise.core.errors import SelfDenoiseError
from napari_selfdenoise.core.steps import Stage, drain
from napari_selfdenoise.core.training.trainer import ProgressEvent

SMALL = dict(features=8, depth=1, patch=32, batch=2)


@pytest.fixture(scope="module")
def noisy():
    return add_noise(fluorescence_image((96, 96), seed=7), "gaussian", sigma=0.1, seed=7)


def run(job):
    """All messages of a job and its result."""
    messages = []
    while True:
        try:
            messages.append(next(job))
        except StopIteration as end:
            return messages, end.value


def test_preview_region_is_one_sample_all_channels_and_a_centred_crop():
    region = jobs.preview_region((5, 3, 40, 600, 700), "TCZYX", position=(2, 1, 30, 590, 10), size=256, depth=16)
    assert region == (slice(2, 3), slice(0, 3), slice(22, 38), slice(344, 600), slice(0, 256))
    assert jobs.preview_region((100, 120), "YX", size=256) == (slice(0, 100), slice(0, 120))


def test_box_regions_crop_y_and_x_and_keep_other_axes():
    boxes = [np.array([[0, 10.2, 20.7], [0, 50.0, 80.0]]), np.array([[-5, -5], [30, 30]])]
    regions = jobs.box_regions(boxes, (4, 64, 100), "TYX")
    assert regions[0] == (slice(0, 4), slice(10, 50), slice(20, 80))
    assert regions[1] == (slice(0, 4), slice(0, 30), slice(0, 30))  # clipped to the image


def test_box_outside_or_too_thin_is_a_clear_error():
    with pytest.raises(SelfDenoiseError, match="region 1 is only 0 pixels along Y"):
        jobs.box_regions([np.array([[200, 200], [300, 300]])], (64, 64), "YX")
    with pytest.raises(SelfDenoiseError, match="at least 8 pixels"):
        jobs.box_regions([np.array([[0, 0], [4, 40]])], (64, 64), "YX")


def test_train_job_yields_steps_previews_and_prediction_then_returns_outputs(noisy, monkeypatch):
    monkeypatch.setattr(jobs, "PREVIEW_FIRST", 0.0)
    monkeypatch.setattr(jobs, "PREVIEW_EVERY", 0.0)
    model = Denoiser("nnet", "YX", steps=4, **SMALL)
    before = noisy.copy()
    preview = jobs.preview_region(noisy.shape, "YX", size=32)
    messages, result = run(jobs.train_job(model, noisy, preview=preview))
    steps = [m.step for m in messages if isinstance(m, ProgressEvent) and "stage" not in m.extra]
    finishing = [m.step for m in messages if isinstance(m, ProgressEvent) and "stage" in m.extra
                 and "stage_progress" not in m.extra]  # its announcement (progress events follow)
    previews = [m for m in messages if isinstance(m, jobs.Preview)]
    assert steps == [1, 2, 3, 4] and finishing == [4]  # N-net's calibration, announced after the last step
    assert [p.step for p in previews] == [1, 2, 3]  # none after the last step: the result follows
    assert all(p.outputs["denoised"].shape == (32, 32) and p.region == preview for p in previews)
    stages = [m for m in messages if isinstance(m, Stage) and m.name == "predicting"]
    assert stages and stages[-1].done == stages[-1].total
    assert set(result.outputs) == {"denoised", "noise_std"} and not result.stopped
    assert result.outputs["denoised"].shape == noisy.shape
    np.testing.assert_array_equal(noisy, before)
    # A preview during training is what the network predicts at that moment (same weights, same result).
    np.testing.assert_allclose(model.predict(noisy)[preview], result.outputs["denoised"][preview], atol=1e-5)


def test_train_job_on_regions_trains_only_there_and_denoises_everything(noisy):
    model = Denoiser("n2s", "YX", steps=2, **SMALL)
    regions = jobs.box_regions([np.array([[0, 0], [48, 96]])], noisy.shape, "YX")
    _, result = run(jobs.train_job(model, noisy, regions=regions))
    assert result.outputs["denoised"].shape == noisy.shape
    assert model.trained


def test_stopping_ends_training_early_and_still_denoises(noisy):
    model = Denoiser("n2v2", "YX", steps=10_000, **SMALL)
    job, messages = jobs.train_job(model, noisy), []
    for message in job:
        messages.append(message)
        if isinstance(message, ProgressEvent) and message.step == 2:
            model.stop()
    events = [m for m in messages if isinstance(m, ProgressEvent)]
    assert events[-1].stopped and events[-1].step <= 3


def test_classic_job_reports_calibration_and_returns_the_winner(noisy):
    messages, result = run(jobs.classic_job(noisy, "YX", ["gaussian", "median"]))
    calibrating = [m for m in messages if m.name == "calibrating"]
    assert calibrating[-1].done == calibrating[-1].total == len(calibrating) > 2
    assert result.extra["calibration"].denoiser in ("gaussian", "median")
    assert result.outputs["denoised"].shape == noisy.shape
    assert len(result.extra["noise_curve"].std) >= 3


def test_predict_job_matches_predict_and_can_be_abandoned(noisy):
    model = Denoiser("n2s", "YX", steps=2, **SMALL).fit(noisy)
    stack = np.stack([noisy] * 3)
    _, result = run(jobs.predict_job(model, stack, "TYX", tile=32))
    np.testing.assert_allclose(result.outputs["denoised"], model.predict(stack, "TYX", tile=32), atol=1e-6)
    job = jobs.predict_job(model, stack, "TYX", tile=32)
    first = next(job)
    assert first.done < first.total
    job.close()  # what a cancelled worker does: no error, nothing left running
    assert drain(model.predict_steps(noisy))["denoised"].shape == noisy.shape


def test_predict_job_on_a_big_lazy_image_streams_into_scratch_zarr(noisy, monkeypatch):
    import dask.array as da

    from napari_selfdenoise.core.data import lazy

    model = Denoiser("n2s", "YX", steps=2, **SMALL).fit(noisy)
    stack = da.from_array(np.stack([noisy] * 3), chunks=(1, 64, 64))
    monkeypatch.setattr(jobs, "LAZY_THRESHOLD", 1000)  # bytes: "too big to hold"
    messages, result = run(jobs.predict_job(model, stack, "TYX", tile=32))
    assert isinstance(result.outputs["denoised"], da.Array)  # a lazy napari layer, backed by the zarr
    assert messages[-1].done == messages[-1].total
    np.testing.assert_array_equal(np.asarray(result.outputs["denoised"]), model.predict(np.asarray(stack), "TYX", tile=32))
    assert lazy.is_lazy(stack)
