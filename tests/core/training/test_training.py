"""Training: stop(), budgets, determinism, history, validation split and input checks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from napari_selfdenoise.core.config import TrainConfig
from napari_selfdenoise.core.data.normalize import Normalization
from napari_selfdenoise.core.data.patches import PatchSampler, split_regions
from napari_selfdenoise.core.data.synthetic import add_noise, fluorescence_image
from napari_selfdenoise.core.denoiser import Denoiser
from napari_selfdenoise.core.errors import SelfDenoiseError

QUICK = dict(patch=32, batch=4, features=8, seed=0, device="cpu")  # determinism and timings: CPU


@pytest.fixture(scope="module")
def image():
    return add_noise(fluorescence_image((64, 64), seed=21), sigma=0.15, seed=22)


def _weights(network):
    return {k: v.detach().clone().contiguous() for k, v in network.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------- stop()


def test_stop_from_event_loop_ends_at_that_step_with_best_weights(image):
    model = Denoiser("n2v2", "YX", steps=1000, steps_per_epoch=2, lr=3e-3, **QUICK)
    events, best, best_step = [], None, None
    for event in model.train(image):
        events.append(event)
        if event.val_loss is not None and event.val_loss == event.best_val_loss:
            best, best_step = _weights(model.network), event.step  # a new best: what the trainer keeps
        last = _weights(model.network)
        if event.step == 13:  # an odd step: validated because it ends the run
            model.stop()
    final = events[-1]
    assert final.step == 13 and model.state.step == 13, [e.step for e in events]
    assert [e.step for e in events if not e.done] == list(range(1, 14))
    assert final.done and final.stopped
    assert not any(e.done or e.stopped for e in events[:-1])
    assert final.val_loss is not None  # the last step is validated
    assert model.history["step"][-1] == 13 and len(model.history["step"]) == len(set(model.history["step"]))
    # The network now holds the best-validation weights, not the last ones.
    assert best is not None and _same(_weights(model.network), best)
    assert best_step != final.step, "setup: the best step should not be the last one"
    assert not _same(best, last)
    assert final.best_val_loss == min(v for v in model.history["val_loss"])


def test_stop_is_harmless_before_and_after_training(image):
    model = Denoiser("n2v2", "YX", steps=3, steps_per_epoch=2, **QUICK)
    model.stop()  # nothing running: no effect
    events = list(model.train(image))
    assert events[-1].step == 3 and not events[-1].stopped
    model.stop()
    assert model.trained


def test_stop_from_another_thread(image):
    import threading

    model = Denoiser("n2v2", "YX", time_limit=60.0, steps_per_epoch=100_000, **QUICK)
    events = []
    timer = threading.Timer(0.5, model.stop)
    timer.start()
    try:
        events = list(model.train(image))
    finally:
        timer.cancel()
    assert events[-1].done and events[-1].stopped  # by stop(), long before the 60 s limit
    steps = [e.step for e in events]
    assert steps[-1] == model.state.step and steps == sorted(steps) and steps[0] == 1


def test_stop_while_the_run_is_being_set_up(image, monkeypatch):
    """Stop pressed right after Train, before the trainer exists: the run ends after its first step."""
    import napari_selfdenoise.core.denoiser as denoiser_module

    model = Denoiser("n2v2", "YX", steps=500, steps_per_epoch=100_000, **QUICK)
    crop = denoiser_module.sample_crop

    def stop_then_crop(*args, **kwargs):  # runs inside train(), before the Trainer is made
        model.stop()
        return crop(*args, **kwargs)

    monkeypatch.setattr(denoiser_module, "sample_crop", stop_then_crop)
    events = list(model.train(image))
    assert events[-1].done and events[-1].stopped
    assert events[-1].step == 1


# ------------------------------------------------------------------------------------ budgets


def test_time_limit_ends_the_run(image):
    model = Denoiser("n2v2", "YX", time_limit=1.0, steps_per_epoch=100_000, **QUICK)
    events = list(model.train(image))
    final = events[-1]
    assert final.done and not final.stopped
    assert final.max_steps is None and final.fraction is None
    assert final.elapsed >= 1.0
    assert final.step < 100_000  # the time limit ended it, not the epoch
    assert not any(e.done for e in events[:-1])
    assert model.history["step"] == [final.step]  # validated once, at the end


def test_epochs_budget(image):
    model = Denoiser("n2v2", "YX", epochs=3, steps_per_epoch=4, **QUICK)
    events = list(model.train(image))
    assert [e.step for e in events] == list(range(1, 13))
    assert events[-1].max_steps == 12 and events[-1].epoch == 3 and events[-1].fraction == 1.0
    assert model.history["step"] == [4, 8, 12]
    assert [e.step for e in events if e.val_loss is not None] == [4, 8, 12]
    # The smaller of steps and epochs wins.
    assert TrainConfig(epochs=3, steps_per_epoch=4, steps=5).max_steps == 5
    assert TrainConfig(epochs=3, steps_per_epoch=4, steps=50).max_steps == 12
    assert TrainConfig().max_steps == 2000 and TrainConfig(time_limit=5).max_steps is None


def test_steps_budget_and_event_fields(image):
    model = Denoiser("n2s", "YX", steps=5, steps_per_epoch=2, **QUICK)
    events = list(model.train(image))
    assert [e.step for e in events] == [1, 2, 3, 4, 5]
    assert [e.done for e in events] == [False] * 4 + [True]
    assert all(e.max_steps == 5 for e in events)
    assert [e.fraction for e in events] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert all(np.isfinite(e.train_loss) and e.lr > 0 and e.patches_per_second > 0 for e in events)
    assert all(a.elapsed <= b.elapsed for a, b in itertools.pairwise(events))


# ---------------------------------------------------------------------- determinism, history


def _history(image, seed, method="n2v2"):
    model = Denoiser(method, "YX", steps=6, steps_per_epoch=2, **{**QUICK, "seed": seed}).fit(image)
    return model.history, model.predict(image)


@pytest.mark.parametrize("method", ["n2s", "n2v2"])
def test_same_seed_same_history(image, method):
    first, out1 = _history(image, 0, method)
    second, out2 = _history(image, 0, method)
    assert first == second
    assert np.array_equal(out1, out2)
    other, _ = _history(image, 1, method)
    assert other["train_loss"] != first["train_loss"]


def test_history_fields_consistent(image):
    model = Denoiser("n2v2", "YX", steps=7, steps_per_epoch=2, **QUICK).fit(image)
    history = model.history
    assert set(history) >= {"step", "train_loss", "val_loss", "lr"}
    lengths = {key: len(values) for key, values in history.items()}
    assert len(set(lengths.values())) == 1, lengths
    assert history["step"] == [2, 4, 6, 7]
    assert all(np.isfinite(v) for key in ("train_loss", "val_loss", "lr") for v in history[key])
    assert model.state.best_val_loss == min(history["val_loss"])


# ---------------------------------------------------------------------------- validation split


def test_many_samples_hold_out_whole_samples():
    sources = [np.zeros((12, 1, 48, 48), np.float32), np.zeros((8, 1, 40, 40), np.float32)]
    train, val, note = split_regions(sources, (32, 32), 0.1)
    assert "whole samples" in note
    as_set = lambda regions: {(r.source, s) for r in regions for s in r.samples}
    assert as_set(train).isdisjoint(as_set(val))
    assert as_set(train) | as_set(val) == {(0, s) for s in range(12)} | {(1, s) for s in range(8)}
    assert len(as_set(val)) == 2
    for region in train + val:
        assert region.bounds == tuple((0, n) for n in sources[region.source].shape[2:])


def _boxes_overlap(a, b):
    return a.source == b.source and set(a.samples) & set(b.samples) and \
        all(lo1 < hi2 and lo2 < hi1 for (lo1, hi1), (lo2, hi2) in zip(a.bounds, b.bounds))


@pytest.mark.parametrize("shape,patch", [((1, 1, 64, 96), (32, 32)), ((2, 1, 80, 48), (32, 32)),
                                         ((1, 1, 16, 48, 40), (8, 32, 32))])
def test_one_image_holds_out_a_slab(shape, patch):
    # Values = the X (or Y) coordinate, so a patch tells where it came from.
    grids = np.meshgrid(*[np.arange(n) for n in shape[2:]], indexing="ij")
    sources = [np.broadcast_to(np.stack(grids)[None], (shape[0], len(grids), *shape[2:])).astype(np.float32)]
    train, val, note = split_regions(sources, patch, 0.1)
    assert "slab" in note
    assert len(train) == len(val) == 1
    assert not _boxes_overlap(train[0], val[0])
    # Together they cover the image.
    assert sum(r.voxels for r in train + val) == int(np.prod(shape[:1] + shape[2:]))
    # Patches drawn from each side only hold their side's pixels.
    identity = Normalization("meanstd", [0.0] * len(grids), [1.0] * len(grids))
    for regions, other in ((train, val), (val, train)):
        sampler = PatchSampler(sources, regions, patch, identity, seed=0, augment=False)
        patches = sampler.batch(16)
        axis = next(a for a, (r, o) in enumerate(zip(regions[0].bounds, other[0].bounds)) if r != o)
        lo, hi = regions[0].bounds[axis]
        assert patches[:, axis].min() >= lo and patches[:, axis].max() < hi


def test_trainer_reports_its_split(image):
    stack = np.stack([image] * 10)
    model = Denoiser("n2v2", "TYX", steps=1, **QUICK)
    list(model.train(stack))
    assert "whole samples" in model._trainer.split_note
    model = Denoiser("n2v2", "YX", steps=1, **QUICK)
    list(model.train(image))
    assert "slab" in model._trainer.split_note


# --------------------------------------------------------------------------------- bad inputs


def test_patch_larger_than_image(image):
    with pytest.raises(SelfDenoiseError, match="patch"):
        Denoiser("n2v2", "YX", steps=2, patch=128, batch=2, features=8, device="cpu").fit(image)


@pytest.mark.parametrize("planes,patch_z", [(10, 16), (8, 6), (12, 12)])
def test_3d_stack_with_few_or_odd_planes(planes, patch_z):
    stack = add_noise(fluorescence_image((planes, 48, 48), seed=23), sigma=0.15, seed=24)
    model = Denoiser("n2v2", "ZYX", steps=2, patch_z=patch_z, batch=2, patch=32, features=8, device="cpu")
    model.fit(stack)
    out = model.predict(stack)
    assert out.shape == stack.shape and out.dtype == np.float32


def test_3d_stack_of_two_planes():
    """Thinner than 2**depth: the U-Net pools only Y and X (it used to refuse); too thin for Z pooling."""
    stack = add_noise(fluorescence_image((2, 48, 48), seed=23), sigma=0.15, seed=24)
    model = Denoiser("n2v2", "ZYX", steps=2, batch=2, patch=32, features=8, device="cpu").fit(stack)
    assert model.architecture["z_levels"] == 0 and model.predict(stack).shape == stack.shape
    with pytest.raises(SelfDenoiseError, match="Z"):
        Denoiser("n2v2", "ZYX", steps=2, batch=2, patch=32, features=8, z_levels=2, device="cpu").fit(stack)


def _nan(image):
    bad = image.copy()
    bad[3, 5] = np.nan
    return bad


def _inf(image):
    bad = image.copy()
    bad[0, 0] = np.inf
    return bad


@pytest.mark.parametrize("make,axes,pattern", [
    (_nan, "YX", "NaN"),
    (_inf, "YX", "infinite"),
    (lambda im: im[:1, :1], "YX", "too small"),
    (lambda im: im[:5, :], "YX", "too small"),
    (lambda im: im.astype(np.complex64), "YX", "complex64.*not supported"),
    (lambda im: im.astype(bool), "YX", "not supported"),
    (lambda im: im, "ZYX", "3 dimensions.*2"),
    (lambda im: im[None], "YX", "2 dimensions.*3"),
    (lambda im: im, "YQ", "S, T, C, Z, Y, X"),
    (lambda im: im, "YY", "repeat"),
    (lambda im: im.tolist(), "YX", "must be an array"),
], ids=["nan", "inf", "1-pixel", "5-rows", "complex", "bool", "axes-too-long", "axes-too-short",
        "bad-letter", "repeated", "list"])
def test_bad_inputs(image, make, axes, pattern):
    data = make(image)
    with pytest.raises(SelfDenoiseError, match=pattern):
        Denoiser("n2v2", axes, steps=1, **QUICK).fit(data)


def test_bad_methods_and_options():
    with pytest.raises(SelfDenoiseError, match="unknown method 'n2x'.*n2s.*n2v"):
        Denoiser("n2x")
    with pytest.raises(SelfDenoiseError, match="no option gird.*grid"):
        Denoiser("n2s", method_options={"gird": 4})
    with pytest.raises(SelfDenoiseError, match="patch"):
        Denoiser("n2v2", patch=30)
    with pytest.raises(SelfDenoiseError, match="val_fraction"):
        Denoiser("n2v2", val_fraction=1.5)
    with pytest.raises(SelfDenoiseError, match="steps"):
        Denoiser("n2v2", steps=0)


def test_list_inputs_need_one_channel_count(image):
    with pytest.raises(SelfDenoiseError, match="no images"):
        Denoiser("n2v2", steps=1, **QUICK).fit([])
    with pytest.raises(SelfDenoiseError, match="channel"):
        Denoiser("n2v2", "CYX", steps=1, **QUICK).fit([np.stack([image, image]), image[None]])
    model = Denoiser("n2v2", "YX", steps=2, **QUICK).fit([image, image[:48, :56]])  # sizes may differ
    assert model.trained


def test_predict_before_training(image):
    with pytest.raises(SelfDenoiseError, match="not trained"):
        Denoiser("n2v2").predict(image)


def test_abandoned_generator_restores_best_weights_and_keeps_optimizer(noisy):
    model = Denoiser("n2s", "YX", steps=50, steps_per_epoch=2, patch=32, batch=4, device="cpu")
    events = model.train(noisy)
    for event in events:
        if event.step == 6:
            break
    events.close()
    assert model.state.optimizer is not None
    best = model._trainer.best_weights
    for name, tensor in model.network.state_dict().items():
        assert torch.equal(tensor, best[name]), name
