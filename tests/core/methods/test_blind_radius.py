"""The shared-noise hint: noise blurred over about a pixel (as resampling, demosaicing or binning make
it) is told apart from independent noise, also on 8-bit images whose background is clipped at zero; it
reads only a crop of any layout; the CLI prints it where the option applies, and not once it is set."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import tifffile

from napari_selfdenoise.cli import main as cli_main
from napari_selfdenoise.core.data.synthetic import add_noise, fluorescence_image
from napari_selfdenoise.core.methods.blind_radius import (
    SHARED_NOISE_RATIO,
    neighbour_difference_ratio,
    shared_noise_hint,
)


def shared_noise_image(shape=(256, 256), seed=0):
    return add_noise(fluorescence_image(shape, seed=seed), "shared_gaussian", sigma=0.1, seed=seed + 1)


def eight_bit(image, offset=-0.05):
    """Scaled to 0-255 and rounded; the negative offset clips the dark background at 0."""
    return np.clip(np.round((image + offset) * 255 / image.max()), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shared_noise_is_flagged_and_independent_noise_is_not(seed):
    clean = fluorescence_image((256, 256), seed=seed)
    independent = {"gaussian": add_noise(clean, "gaussian", sigma=0.1, seed=seed),
                   "poisson_gaussian": add_noise(clean, "poisson_gaussian", photons=20, seed=seed)}
    independent.update({f"{k}, 8-bit clipped": eight_bit(v) for k, v in list(independent.items())})
    for name, image in independent.items():
        ratio = neighbour_difference_ratio(image)
        assert ratio > 0.85, f"{name}: {ratio:.3f}"
        assert shared_noise_hint(image, "YX") is None
    shared = shared_noise_image(seed=seed)
    for image in (shared, eight_bit(shared)):
        assert neighbour_difference_ratio(image) < SHARED_NOISE_RATIO
        assert "blind radius of 2" in shared_noise_hint(image, "YX")


def test_any_layout_is_read_through_a_central_crop_and_left_unchanged():
    plane = shared_noise_image((200, 180))
    white = add_noise(fluorescence_image((200, 180)), "gaussian", seed=4)
    stack = np.stack([white, plane, white])  # the middle Z plane carries the shared noise
    before = stack.copy()
    assert shared_noise_hint(stack, "ZYX") is not None
    assert shared_noise_hint(stack[[0, 0, 2]], "ZYX") is None
    assert shared_noise_hint(np.moveaxis(stack, 0, -1), "YXC") is not None  # the min over channels
    big = da.from_array(np.tile(plane, (2, 1, 6, 6)), chunks=(1, 1, 256, 256))  # TCYX, 1200 x 1080
    assert shared_noise_hint(big, "TCYX") is not None
    np.testing.assert_array_equal(stack, before)


def test_flat_or_tiny_images_give_no_hint():
    assert neighbour_difference_ratio(np.full((64, 64), 3.0)) is None
    assert shared_noise_hint(np.full((64, 64), 3.0), "YX") is None
    assert shared_noise_hint(shared_noise_image((8, 8)), "YX") is None


def test_cli_train_and_calibrate_print_the_hint_until_the_option_is_set(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "shared.tif", shared_noise_image((96, 96)))
    train = ["train", str(tmp_path / "shared.tif"), "--method", "n2s", "--steps", "1", "--patch", "32",
             "--batch", "2", "--features", "4", "--out", str(tmp_path / "m.sdmodel"), "-q"]
    assert cli_main(train) == 0
    assert "hint: the noise looks shared" in capsys.readouterr().err
    with_option = train[:-3] + ["--out", str(tmp_path / "m2.sdmodel"), "-q", "--option", "blind_radius=2"]
    assert cli_main(with_option) == 0
    assert "hint" not in capsys.readouterr().err
    calibrate = ["calibrate", str(tmp_path / "shared.tif"), "--denoisers", "gaussian", "-q",
                 "--out", str(tmp_path / "c.tif")]
    assert cli_main(calibrate) == 0
    assert "(--blind-radius 2)" in capsys.readouterr().err
