"""The Trainer's pipeline: prefetch thread lifetime, out-of-memory back-off, the batch chosen for a device."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from napari_selfdenoise.core.data.patches import Prefetcher
from napari_selfdenoise.core.data.synthetic import add_noise, fluorescence_image
from napari_selfdenoise.core.denoiser import Denoiser
from napari_selfdenoise.core.errors import SelfDenoiseError
from napari_selfdenoise.core.nn.device import batch_that_fits, is_out_of_memory

QUICK = dict(patch=32, features=8, seed=0, device="cpu")


@pytest.fixture(scope="module")
def image():
    return add_noise(fluorescence_image((64, 64), seed=31), sigma=0.15, seed=32)


def _prefetch_threads():
    return [t for t in threading.enumerate() if t.name == Prefetcher.THREAD_NAME]


# ------------------------------------------------------------------------------ prefetch thread


def test_no_prefetch_thread_is_left_after_a_run_a_closed_generator_or_an_error(image):
    model = Denoiser("n2s", "YX", steps=4, steps_per_epoch=2, batch=4, **QUICK)
    events = model.train(image)
    next(events)
    assert len(_prefetch_threads()) == 1  # batches are drawn in the background while training
    list(events)
    assert not _prefetch_threads()

    events = model.train(image)  # abandoned half-way (a quit GUI worker)
    next(events)
    events.close()
    assert not _prefetch_threads()

    with pytest.raises(RuntimeError, match="consumer failed"):  # an error in the consumer
        for event in model.train(image):
            raise RuntimeError("consumer failed")
    assert not _prefetch_threads()


def test_an_error_while_drawing_patches_reaches_the_caller_and_stops_the_thread(image, monkeypatch):
    model = Denoiser("n2s", "YX", steps=20, batch=4, **QUICK)
    events = model.train(image)
    next(events)
    sampler = model._trainer.samplers[0]
    monkeypatch.setattr(sampler, "batch", lambda size: (_ for _ in ()).throw(OSError("file vanished")))
    with pytest.raises(OSError, match="file vanished"):
        list(events)
    assert not _prefetch_threads()
    assert not model._trainer.running


# -------------------------------------------------------------------------- out-of-memory back-off


def _fail_once_above(model, patches: int, passes: list):
    """Make the method's loss raise torch's OutOfMemoryError once for more than ``patches`` patches."""
    real = model.method.training_loss
    failed = []

    def training_loss(net, batch, gen):
        if batch.shape[0] > patches and not failed:
            failed.append(batch.shape[0])
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        if torch.is_grad_enabled():  # training passes (validation runs in passes of the same size too)
            passes.append(batch.shape[0])
        return real(net, batch, gen)

    model.method.training_loss = training_loss
    return failed


def test_out_of_memory_halves_the_pass_and_training_goes_on(image):
    model = Denoiser("n2s", "YX", steps=6, steps_per_epoch=3, batch=8, accumulate=2, **QUICK)
    passes = []
    failed = _fail_once_above(model, 2, passes)
    events = list(model.train(image))
    assert failed == [4]  # a shard of 4 patches did not fit
    assert events[-1].step == 6 and events[-1].done and model.trained
    assert model._trainer.passes == 2
    # The same batch per step: 2 shards x 2 passes x 2 patches (the failed step was retried whole).
    assert passes == [2] * (6 * 4)
    first = next(e for e in events if e.extra.get("notes"))
    assert first.step == 1 and "out of CPU memory with 4 patches per pass" in first.extra["notes"][0]
    assert "passes of 2" in first.extra["notes"][0] and "batch of 8" in first.extra["notes"][0]
    assert any("out of CPU memory" in note for note in events[-1].extra["notes"])  # the CLI prints these
    assert all(np.isfinite(e.train_loss) for e in events)


def test_out_of_memory_with_one_patch_per_pass_is_a_clear_error(image):
    model = Denoiser("n2s", "YX", steps=3, batch=1, **QUICK)
    _fail_once_above(model, 0, [])
    with pytest.raises(SelfDenoiseError, match="out of CPU memory with 1 patch"):
        list(model.train(image))
    assert not _prefetch_threads()


def test_other_errors_are_not_taken_for_out_of_memory():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


# ------------------------------------------------------------------------ the batch for the device


def test_batch_left_unset_is_chosen_for_the_device_and_kept(image):
    model = Denoiser("n2s", "YX", steps=2, **QUICK)
    assert model.config.batch is None
    model.fit(image)
    assert model.config.batch == 16 and model._trainer.shard_size == 16  # the CPU default, as before
    assert model.config.to_dict()["batch"] == 16  # what the model file records
    two = Denoiser("n2s", "YX", steps=1, accumulate=3, **QUICK).fit(image)
    assert two.config.batch == 18 and two._trainer.shard_size == 6  # a multiple of the shards


def test_batch_that_fits_the_free_memory():
    mib = 1024**2
    # 10 MiB per patch, 4 GiB free: half of it holds 204 patches -> 128 (and the 64^2 cap is 128 too).
    assert batch_that_fits(10 * mib, 4096 * mib, 64 * 64) == 128
    assert batch_that_fits(10 * mib, 1024 * mib, 64 * 64) == 32  # 51 fit
    assert batch_that_fits(10 * mib, 4096 * mib, 16 * 64 * 64) == 8  # 3-D patches: the pixel cap
    assert batch_that_fits(10 * mib, 10 * mib, 64 * 64) == 1  # nothing fits: at least one
    assert batch_that_fits(10 * mib, 1024 * mib, 64 * 64, multiple=3) == 48  # 16 x 3 <= 51


def test_prediction_out_of_memory_halves_the_forward_pass(noisy):
    model = Denoiser("n2s", "YX", steps=2, batch=4, **QUICK).fit(noisy)
    reference = model.predict(noisy, tile=32, batch_size=4)
    real, sizes = model.method.predict, []

    def predict(net, x):
        if x.shape[0] > 2:  # a device that holds 2 tiles at a time, not 4
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        sizes.append(x.shape[0])
        return real(net, x)

    model.method.predict = predict
    predictor = model.predictor(tile=32, batch_size=4)
    with pytest.warns(RuntimeWarning, match="out of CPU memory predicting 4 tiles at once; now 2 at a time"):
        out = predictor(noisy[None, None], model.normalization)
    assert predictor.forward_limit == 2 and max(sizes) == 2  # (the grid's last batch may hold fewer)
    np.testing.assert_allclose(out[0, 0], reference, rtol=1e-5, atol=1e-5)
    model.method.predict = lambda net, x: (_ for _ in ()).throw(torch.OutOfMemoryError("out of memory"))
    with pytest.raises(torch.OutOfMemoryError):  # one tile at a time and still too big: the error stands
        model.predict(noisy, tile=32, batch_size=1)
