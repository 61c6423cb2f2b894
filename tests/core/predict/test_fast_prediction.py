"""Fast prediction: tiles fitted to the image, the bfloat16 kernel, the compile fallback."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_selfdenoise.core.data.synthetic import add_noise, fluorescence_image
from napari_selfdenoise.core.denoiser import Denoiser
from napari_selfdenoise.core.errors import SelfDenoiseError
from napari_selfdenoise.core.nn.device import native_bfloat16
from napari_selfdenoise.core.nn.networks import UNet
from napari_selfdenoise.core.predict import tiled as prediction
from napari_selfdenoise.core.predict.tiled import TiledPredictor, fitted_tile, tile_starts

CPU = torch.device("cpu")


def _noisy(shape, seed=0, sigma=0.15):
    return add_noise(fluorescence_image(shape, seed=seed), sigma=sigma, seed=seed + 100).astype(np.float32)


def _trained(method="n2v2", steps=6, **options):
    image = _noisy((96, 96), seed=11)
    return Denoiser(method, "YX", steps=steps, seed=0, patch=32, batch=4, features=8, steps_per_epoch=5,
                    **options).fit(image)


@pytest.mark.parametrize("size", [100, 1088, 1089, 1500, 2048, 3000, 5000])
def test_fitted_tile_covers_with_the_fewest_tiles(size):
    overlap, multiple, largest = 72, 4, 1088
    padded = -(-size // multiple) * multiple
    tile = fitted_tile(padded, largest, overlap, multiple)
    starts = tile_starts(padded, tile, overlap, multiple)
    assert tile % multiple == 0 or tile == padded
    assert starts[0] == 0 and starts[-1] + tile == padded  # covers the axis
    assert len(starts) == len(tile_starts(padded, largest, overlap, multiple))  # no more tiles than the largest
    assert tile <= max(largest, min(padded, largest))
    if len(starts) > 1:  # and no bigger than needed: one grid step smaller would take another tile
        assert len(tile_starts(padded, tile - multiple, overlap, multiple)) > len(starts)


def test_default_cpu_tiles_repeat_little_work():
    """A 2048^2 image: 2 x 2 fitted tiles (under 10 % of the pixels predicted twice), a 64 x 512 x 512
    volume 2 x 2 tiles; the old defaults cut them into 12 x 12 tiles of 256^2 and 8 x 8 of 64 x 128^2."""
    for dims, spatial in [(2, (2048, 2048)), (3, (64, 512, 512))]:
        plan = TiledPredictor(None, UNet(dims=dims, features=8), 2, CPU).plan(spatial)
        assert plan.count == 4, (spatial, plan.tile)
        assert plan.count * np.prod(plan.tile) / np.prod(spatial) < (1.1 if dims == 2 else 1.35)


def test_auto_precision_follows_the_plan_not_the_block():
    model = _trained()
    predictor = model.predictor()
    small, large = predictor.plan((192, 160)), predictor.plan((1100, 1000))
    assert predictor.kernel(small).precision == "float32"
    assert predictor.kernel(large).precision == ("bfloat16" if native_bfloat16(CPU) else "float32")
    assert model.predictor(precision="float32").kernel(large).precision == "float32"
    assert model.predictor(tta=True).kernel(predictor.plan((400, 400))).precision == \
        ("bfloat16" if native_bfloat16(CPU) else "float32")  # 8 passes: the work counts
    assert not predictor.kernel(large).compiled  # compiling pays only on much larger samples
    with pytest.raises(SelfDenoiseError, match="precision"):
        model.predictor(precision="float16")


def test_auto_precision_counts_every_frame_of_a_stack():
    """A 64-frame stack of 512^2 frames is one big job: each frame is small, the whole is not."""
    predictor = _trained().predictor()
    one, stack = predictor.plan((512, 512)), predictor.plan((512, 512), samples=64)
    assert predictor.kernel(one).precision == "float32"
    assert predictor.kernel(stack).precision == ("bfloat16" if native_bfloat16(CPU) else "float32")


def test_auto_keeps_float32_for_noise_model_methods():
    """N-net's posterior amplifies bfloat16 rounding: auto stays float32 for it even on large images."""
    predictor = _trained("nnet", steps=2).predictor()
    assert predictor.kernel(predictor.plan((1100, 1000))).precision == "float32"


def test_bfloat16_close_to_float32_and_input_untouched():
    model = _trained("n2v2")
    image = _noisy((160, 144), seed=12)
    before = image.copy()
    exact = model.predict_outputs(image, precision="float32")
    fast = model.predict_outputs(image, precision="bfloat16")
    np.testing.assert_array_equal(image, before)
    for name in exact:
        assert fast[name].dtype == np.float32 and fast[name].shape == image.shape
        diff = np.abs(fast[name] - exact[name])
        assert diff.max() > 0, f"{name}: bfloat16 did not run"
        # bfloat16 keeps 8 bits: far below the noise (0.15) and the signal range (~1)
        assert diff.mean() < 2e-3 and diff.max() < 3e-2, (name, diff.mean(), diff.max())
    again = model.predict_outputs(image, precision="bfloat16")
    for name in fast:
        np.testing.assert_array_equal(again[name], fast[name])  # deterministic: what streaming relies on


def test_streamed_equals_in_memory_in_bfloat16(tmp_path):
    zarr = pytest.importorskip("zarr")
    model = _trained()
    image = _noisy((200, 184), seed=13)
    whole = model.predict(image, tile=96, precision="bfloat16")
    assert not np.array_equal(whole, model.predict(image, tile=96, precision="float32"))
    out = tmp_path / "out.ome.zarr"
    model.predict_to(image, out, tile=96, precision="bfloat16", block=(64, 64))
    streamed = np.asarray(zarr.open(str(out), mode="r")["0"]).reshape(image.shape)
    np.testing.assert_array_equal(streamed, whole)


def test_compile_failure_falls_back_to_eager(monkeypatch):
    model = _trained()
    image = _noisy((64, 64), seed=14)
    eager = model.predict(image, compiled=False)

    def broken_at_first_call(module, **_):
        def run(x):
            raise RuntimeError("no C++ compiler\nsecond line")
        return run

    monkeypatch.setattr(torch, "compile", broken_at_first_call)
    with pytest.warns(RuntimeWarning, match="could not compile.*no C\\+\\+ compiler"):
        fallback = model.predict(image, compiled=True)
    np.testing.assert_array_equal(fallback, eager)

    def refuses(module, **_):
        raise RuntimeError("torch.compile is not supported here")

    monkeypatch.setattr(torch, "compile", refuses)
    with pytest.warns(RuntimeWarning, match="not supported here"):
        np.testing.assert_array_equal(model.predict(image, compiled=True), eager)


def test_kernels_are_reused_per_predictor():
    predictor = _trained().predictor(precision="bfloat16")
    plan = predictor.plan((128, 128))
    assert predictor.kernel(plan) is predictor.kernel(predictor.plan((120, 128)))
    assert prediction.BFLOAT16_MIN_PIXELS > 128 * 128  # small images keep float32 by default
