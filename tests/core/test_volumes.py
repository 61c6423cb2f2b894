"""3D and time: ZYX volumes, TZYX and TYX stacks as samples, thin stacks with coarse Z (fewer than 8 planes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_selfdenoise.core.data.synthetic import add_noise, fluorescence_image, psnr
from napari_selfdenoise.core.denoiser import Denoiser
from napari_selfdenoise.core.methods import method_names
from napari_selfdenoise.core.nn.networks import UNet, auto_z_levels, build_network

METHODS = method_names(include_classic=False)
TINY = dict(patch=32, batch=2, features=8, steps=3, steps_per_epoch=2, device="cpu")


def coarse_volume(planes: int, size: int = 96, seed: int = 0):
    """A clean volume sampled every 4th plane (Z 4x coarser than Y/X) and its noisy version."""
    clean = fluorescence_image((planes * 4, size, size), seed=seed)[::4]
    return clean, add_noise(clean, sigma=0.15, seed=seed + 1)


def test_auto_z_levels():
    assert [auto_z_levels(p, 2) for p in (1, 3, 7, 8, 16, 100)] == [0, 0, 0, 2, 2, 2]
    assert [auto_z_levels(p, 4) for p in (7, 8, 15, 16)] == [0, 3, 3, 4]


@pytest.mark.parametrize("n2v2", [False, True], ids=["unet", "n2v2"])
def test_unet_pools_z_only_at_the_first_levels(n2v2):
    torch.manual_seed(0)
    net = UNet(1, 1, dims=3, depth=2, features=4, n2v2=n2v2, z_levels=1)
    assert net.pool_multiples == (2, 4, 4)
    x = torch.randn(1, 1, 6, 16, 12)
    assert net(x).shape == x.shape
    x = torch.randn(1, 1, 3, 16, 16)  # z_levels=0: any number of planes
    assert UNet(1, 1, dims=3, depth=2, features=4, n2v2=n2v2, z_levels=0)(x).shape == x.shape
    with pytest.raises(ValueError, match="z_levels"):
        UNet(1, 1, dims=3, depth=2, z_levels=3)


def test_old_architecture_without_z_levels_pools_z_everywhere():
    """Model files written before ``z_levels`` existed keep loading, with their isotropic pooling."""
    old = {"kind": "unet", "in_channels": 1, "out_channels": 1, "dims": 3, "depth": 2, "features": 4, "n2v2": True}
    net = build_network(old)
    assert net.pool_multiples == (4, 4, 4)
    net.load_state_dict(UNet(1, 1, 3, 2, 4, True).state_dict())
    assert build_network({**old, "kind": "nnet"}).pool_multiples == (4, 4, 4)


# ------------------------------------------------------------------------------------------------ ZYX


def test_zyx_trains_on_3d_patches_and_tiles_match_whole():
    image = add_noise(fluorescence_image((16, 64, 64), seed=2), sigma=0.15, seed=3)
    model = Denoiser("n2v2", "ZYX", patch_z=8, **TINY)
    model.fit(image)
    assert model.architecture["dims"] == 3 and model.architecture["z_levels"] == 2
    assert model._trainer.patch_shape == (8, 32, 32)
    whole = model.predict(image, tile=(16, 64, 64))
    calls = []
    tiled = model.predict_outputs(image, tile=(8, 32, 32), progress=lambda d, t: calls.append(t))["denoised"]
    assert calls[-1] > 1  # several overlapping tiles along each axis
    assert tiled.shape == image.shape and tiled.dtype == np.float32
    # Tiles this small overlap by less than the receptive field (test_prediction checks the float-precision
    # case); the blending still keeps them far below the noise level (0.15).
    np.testing.assert_allclose(tiled, whole, atol=2e-3, rtol=0)


def test_tzyx_time_points_are_samples_of_one_3d_model():
    volumes = np.stack([add_noise(fluorescence_image((8, 48, 48), seed=4), sigma=0.15, seed=s) for s in range(3)])
    model = Denoiser("n2s", "TZYX", patch_z=8, **TINY)
    model.fit(volumes)
    assert model.architecture["dims"] == 3
    out = model.predict(volumes)
    assert out.shape == volumes.shape and out.dtype == np.float32
    # Time point by time point: the same as each volume alone.
    np.testing.assert_allclose(out[2], model.predict(volumes[2], axes="ZYX"), atol=1e-5)


def test_zyx_stack_as_tyx_frames_gets_a_2d_model():
    _, noisy = coarse_volume(5)
    model = Denoiser("n2s", "TYX", **TINY)
    model.fit(noisy)
    assert model.architecture["dims"] == 2
    out = model.predict(noisy)
    assert out.shape == noisy.shape
    np.testing.assert_allclose(out[4], model.predict(noisy[4], axes="YX"), atol=1e-5)


# ------------------------------------------------------------------------------- thin, coarse Z


@pytest.mark.parametrize("planes", [3, 5, 7])
def test_thin_coarse_volume_denoises(planes):
    clean, noisy = coarse_volume(planes, seed=planes)
    model = Denoiser("n2s", "ZYX", steps=40, patch=32, batch=4, features=8, lr=1e-3, steps_per_epoch=20,
                     device="cpu")
    model.fit(noisy)
    # Pools only Y and X and trains on every plane of the stack.
    assert model.architecture["z_levels"] == 0
    assert model._trainer.patch_shape == (planes, 32, 32)
    out = model.predict(noisy)
    assert out.shape == noisy.shape and out.dtype == np.float32
    assert psnr(clean, out) > psnr(clean, noisy) + 1.0, (psnr(clean, noisy), psnr(clean, out))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_on_three_planes(method, tmp_path):
    _, noisy = coarse_volume(3, size=48)
    model = Denoiser(method, "ZYX", **TINY)
    model.fit(noisy)
    outputs = model.predict_outputs(noisy, tile=(3, 32, 32))
    for name, values in outputs.items():
        assert values.shape == noisy.shape and np.isfinite(values).all(), name
    loaded = Denoiser.load(model.save(tmp_path / "thin.sdmodel"))
    assert loaded.architecture["z_levels"] == 0
    np.testing.assert_allclose(loaded.predict(noisy, tile=(3, 32, 32)), outputs["denoised"], atol=1e-6)


def test_thin_model_tiles_match_whole():
    _, noisy = coarse_volume(5, size=96)
    model = Denoiser("n2v2", "ZYX", **TINY).fit(noisy)
    whole = model.predict(noisy, tile=(5, 96, 96))
    tiled = model.predict(noisy, tile=32)  # Z tile: all 5 planes (no Z padding), 3 x 3 YX tiles
    np.testing.assert_allclose(tiled, whole, atol=1e-4, rtol=0)


def test_forced_z_levels_on_a_thin_stack():
    _, noisy = coarse_volume(3, size=48)
    model = Denoiser("n2s", "ZYX", z_levels=1, **TINY)
    model.fit(noisy)  # pools Z once: a 2-plane Z patch
    assert model._trainer.patch_shape == (2, 32, 32)
    assert model.predict(noisy).shape == noisy.shape
    from napari_selfdenoise.core.errors import SelfDenoiseError

    with pytest.raises(SelfDenoiseError, match="Z planes"):
        Denoiser("n2s", "ZYX", z_levels=2, **TINY).fit(noisy)
    with pytest.raises(SelfDenoiseError, match="z_levels"):
        Denoiser("n2s", "ZYX", z_levels=3, **TINY)
