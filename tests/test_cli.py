"""The ``selfdenoise`` command line, end to end through a subprocess (``python -m napari_selfdenoise.cli``).

Small synthetic data (96x96) and tiny budgets keep each test at a few seconds.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_selfdenoise import __version__
from napari_selfdenoise.core.data.synthetic import add_noise, fluorescence_image, psnr, timelapse

FAST = ["--steps", "20", "--patch", "32", "--batch", "4", "--features", "8"]


def run(*args, cwd=None, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "napari_selfdenoise.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)


def listing(folder: Path) -> set[str]:
    """Every file and folder below ``folder``, hidden ones (temporary '.part' files) included."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def assert_clean_failure(proc, folder: Path, before: set[str], message: str | None = None):
    """Non-zero exit, one 'selfdenoise: error:' line last, no traceback, nothing written."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("selfdenoise: error: "), proc.stderr
    if message is not None:
        assert message.lower() in last.lower(), last
    assert listing(folder) == before, listing(folder) - before
    return last


def noisy_image(shape=(96, 96), seed=0) -> np.ndarray:
    return add_noise(fluorescence_image(shape, seed=seed), "poisson_gaussian", sigma=0.03, seed=seed + 1)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """Two noisy images and an n2v2 model trained on the first (trained once for the module)."""
    folder = tmp_path_factory.mktemp("shared")
    tifffile.imwrite(folder / "a.tif", noisy_image(seed=0))
    tifffile.imwrite(folder / "b.tif", noisy_image(seed=5))
    proc = run("train", folder / "a.tif", "--method", "n2v2", "--axes", "YX", "--seed", "0",
               *FAST, "--out", folder / "model.sdmodel")
    assert proc.returncode == 0, proc.stderr
    return folder


# ------------------------------------------------------------------------------ synthetic data


def test_synthetic_images_are_fluorescence_like_and_seeded():
    image = fluorescence_image((128, 160), seed=3)
    assert image.shape == (128, 160) and image.dtype == np.float32
    assert 0 <= image.min() and image.max() == pytest.approx(1.0)
    assert image.mean() < 0.4  # dark background, bright sparse structures
    np.testing.assert_array_equal(image, fluorescence_image((128, 160), seed=3))
    assert not np.array_equal(image, fluorescence_image((128, 160), seed=4))
    volume = fluorescence_image((16, 64, 64), seed=0)
    assert volume.shape == (16, 64, 64) and volume.dtype == np.float32 and volume.std() > 0.02
    movie = timelapse(4, (64, 64), seed=0)
    assert movie.shape == (4, 64, 64) and movie.dtype == np.float32
    assert 0 < np.abs(movie[1] - movie[0]).mean() < np.abs(movie[3] - movie[0]).mean()  # slow drift


def test_noise_and_psnr():
    clean = fluorescence_image((64, 64), seed=0)
    weak = add_noise(clean, "gaussian", sigma=0.05, seed=0)
    strong = add_noise(clean, "gaussian", sigma=0.2, seed=0)
    assert weak.dtype == np.float32 and weak.shape == clean.shape
    assert psnr(clean, weak) == pytest.approx(20 * np.log10(1 / 0.05), abs=0.5)
    assert psnr(clean, weak) > psnr(clean, strong)
    shot = add_noise(clean, "poisson_gaussian", photons=10, sigma=0.0, seed=0)
    bright, dark = clean > 0.5, clean < 0.1
    assert (shot - clean)[bright].std() > (shot - clean)[dark].std()  # signal-dependent noise
    assert psnr(clean, clean) == float("inf")
    with pytest.raises(ValueError):
        add_noise(clean, "speckle")


# ------------------------------------------------------------------------------ happy paths


def test_help_and_version_are_light():
    proc = run("--help")
    assert proc.returncode == 0 and "train" in proc.stdout and "demo" in proc.stdout
    code = "import sys, napari_selfdenoise.cli; print('torch' in sys.modules)"
    light = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert light.stdout.strip() == "False", light.stderr
    version = run("--version")
    assert version.returncode == 0 and re.match(r"selfdenoise \d+\.\d+", version.stdout)


def test_train_help_lists_methods_and_devices():
    proc = run("train", "--help")
    assert proc.returncode == 0
    for name in ("n2s", "n2v", "n2v2", "cpu", "--time-limit", "--option"):
        assert name in proc.stdout


def test_train_writes_model_and_summary(shared):
    model = shared / "model.sdmodel"
    assert model.is_file() and model.stat().st_size > 1000
    assert not [p for p in shared.iterdir() if p.name.endswith(".part")]


def test_train_summary_line(tmp_path):
    tifffile.imwrite(tmp_path / "in.tif", noisy_image())
    proc = run("train", tmp_path / "in.tif", "--method", "n2s", *FAST, "--val-fraction", "0.2",
               "--lr", "2e-3", "--lr-decay", "0.25", "--depth", "2", "--option", "grid=3", "--out", tmp_path / "m.sdmodel")
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert re.search(r"20 steps", last) and "validation loss" in last and "m.sdmodel" in last, last
    info = run("info", tmp_path / "m.sdmodel")
    assert info.returncode == 0, info.stderr
    assert re.search(r"method:\s+n2s", info.stdout)
    assert "grid=3" in info.stdout and re.search(r"20 steps", info.stdout)
    assert "lr 0.002, falling to 0 over the last 25% of the budget" in info.stdout


def test_info(shared):
    proc = run("info", shared / "model.sdmodel")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"method:\s+n2v2", proc.stdout)
    assert re.search(r"axes:\s+YX", proc.stdout)
    assert re.search(r"best val loss:\s+\d", proc.stdout)
    assert f"napari-selfdenoise {__version__}" in proc.stdout


def test_predict_one_input(shared, tmp_path):
    out = tmp_path / "den.ome.tif"
    proc = run("predict", shared / "model.sdmodel", shared / "a.tif", "--out", out, "--tile", "64")
    assert proc.returncode == 0, proc.stderr
    with tifffile.TiffFile(out) as tif:
        assert tif.is_ome
        assert tif.series[0].axes == "YX"
        data = tif.asarray()
    assert data.shape == (96, 96) and data.dtype == np.float32
    assert np.isfinite(data).all() and data.std() > 0
    assert listing(tmp_path) == {"den.ome.tif"}


def test_predict_two_inputs_into_folder(shared, tmp_path):
    out = tmp_path / "results"
    proc = run("predict", shared / "model.sdmodel", shared / "a.tif", shared / "b.tif", "--out", out,
               "--tta", "--batch-size", "2", "-q")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a_denoised.ome.tif", "b_denoised.ome.tif"]
    a, b = (tifffile.imread(out / f"{n}_denoised.ome.tif") for n in "ab")
    assert a.shape == b.shape == (96, 96) and not np.array_equal(a, b)


def test_uint16_output_in_input_units(tmp_path):
    raw = (noisy_image().clip(0, None) * 3000 + 100).astype(np.uint16)
    tifffile.imwrite(tmp_path / "u16.tif", raw)
    model, out = tmp_path / "u16.sdmodel", tmp_path / "u16_den.tif"
    assert run("train", tmp_path / "u16.tif", "--method", "n2s", "--steps", "60", "--patch", "32",
               "--batch", "4", "--features", "8", "--lr", "2e-3", "--out", model, "-q").returncode == 0
    proc = run("predict", model, tmp_path / "u16.tif", "--out", out, "-q")
    assert proc.returncode == 0, proc.stderr
    den = tifffile.imread(out)
    assert den.dtype == np.float32  # not cast back to uint16
    assert 0.6 * raw.mean() < den.mean() < 1.4 * raw.mean(), (den.mean(), raw.mean())
    assert den.max() > 1000  # raw units, not normalised ones


def test_predict_keeps_axes_and_pixel_size(shared, tmp_path):
    stack = np.stack([noisy_image(seed=s) for s in (1, 2)])
    tifffile.imwrite(tmp_path / "t.ome.tif", stack, ome=True,
                     metadata={"axes": "TYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2})
    proc = run("predict", shared / "model.sdmodel", tmp_path / "t.ome.tif", "--out", tmp_path / "o.ome.tif")
    assert proc.returncode == 0, proc.stderr
    with tifffile.TiffFile(tmp_path / "o.ome.tif") as tif:
        assert tif.series[0].axes == "TYX"
        assert 'PhysicalSizeX="0.2"' in tif.ome_metadata
        assert tif.asarray().shape == (2, 96, 96)


def test_calibrate_writes_output_and_report(tmp_path):
    tifffile.imwrite(tmp_path / "in.tif", noisy_image())
    out, report = tmp_path / "cal.ome.tif", tmp_path / "report.json"
    proc = run("calibrate", tmp_path / "in.tif", "--out", out, "--report", report,
               "--denoisers", "median,gaussian")
    assert proc.returncode == 0, proc.stderr
    data = tifffile.imread(out)
    assert data.shape == (96, 96) and data.dtype == np.float32
    result = json.loads(report.read_text())
    assert result["denoiser"] in ("median", "gaussian")
    assert set(result["losses"]) == {"median", "gaussian"}
    assert all(len(curve) >= 2 for curve in result["losses"].values())
    assert "*" in proc.stdout and "loss" in proc.stdout  # the loss table, the winner marked
    assert re.search(rf"chose {result['denoiser']}", proc.stdout)


def test_demo_prints_psnr_gain(tmp_path):
    proc = run("demo", "--steps", "5", "--out", tmp_path / "demo", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"input\s+PSNR\s+\d+\.\d+ dB", proc.stdout)
    assert re.search(r"output\s+PSNR\s+\d+\.\d+ dB", proc.stdout)
    assert re.search(r"gain\s+[+-]\d+\.\d+ dB", proc.stdout), proc.stdout
    names = {p.name for p in (tmp_path / "demo").iterdir()}
    assert names == {"noisy.ome.tif", "denoised.ome.tif", "clean.ome.tif", "model.sdmodel"}
    assert tifffile.imread(tmp_path / "demo" / "noisy.ome.tif").shape == (256, 256)
    assert run("info", tmp_path / "demo" / "model.sdmodel").returncode == 0


@pytest.mark.parametrize("method", [None, "auto"])
def test_train_without_method_races_auto_and_info_shows_the_table(tmp_path, method):
    tifffile.imwrite(tmp_path / "in.tif", noisy_image())
    chosen = ["--method", method] if method else []
    proc = run("train", tmp_path / "in.tif", *chosen, "--axes", "YX", *FAST, "--option", "candidates=n2s,n2same",
               "--out", tmp_path / "m.sdmodel", timeout=400)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("training auto"), proc.stdout
    winner = re.search(r"^winner: (\S+)$", proc.stdout, re.MULTILINE).group(1)
    assert winner in ("classic", "n2s", "n2same")
    for name in ("classic", "n2s", "n2same"):  # the score table: one row each, one winner
        assert re.search(rf"^  {name} +[\d.e-]+", proc.stdout, re.MULTILINE), proc.stdout
    assert proc.stdout.count(", winner") == 1 and "quality estimate: " in proc.stdout
    info = run("info", tmp_path / "m.sdmodel")
    assert info.returncode == 0 and f"winner {winner}" in info.stdout and "quality:" in info.stdout
    assert info.stdout.count(", winner") == 1 and "dropped" in info.stdout
    predicted = run("predict", tmp_path / "m.sdmodel", tmp_path / "in.tif", "--out", tmp_path / "out.tif")
    assert predicted.returncode == 0 and f"with {winner}, chosen by auto" in predicted.stdout, predicted.stderr


def test_time_limit_ends_training(tmp_path):
    tifffile.imwrite(tmp_path / "in.tif", noisy_image())
    proc = run("train", tmp_path / "in.tif", "--method", "n2v2", "--time-limit", "2", "--patch", "32", "--batch", "4",
               "--features", "8", "--out", tmp_path / "m.sdmodel")
    assert proc.returncode == 0, proc.stderr
    steps = int(re.search(r"for (\d+) steps", proc.stdout.strip().splitlines()[-1]).group(1))
    assert 1 <= steps < 2000  # the time limit ended it, not the default 2000-step budget
    info = run("info", tmp_path / "m.sdmodel").stdout
    seconds = float(re.search(r"steps in ([\d.]+) s", info).group(1))
    assert seconds >= 2.0, info


def test_interrupt_writes_nothing(tmp_path):
    tifffile.imwrite(tmp_path / "in.tif", noisy_image())
    before = listing(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "napari_selfdenoise.cli", "train", str(tmp_path / "in.tif"),
                             "--method", "n2v2", "--steps", "100000", "--patch", "32", "--batch", "4", "--features", "8",
                             "--out", str(tmp_path / "m.sdmodel")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("training")  # printed just before training starts
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("selfdenoise: error: interrupted")
    assert listing(tmp_path) == before


def test_interrupt_inside_exec_still_exits_130_under_python_m(tmp_path):
    # Libraries run strings with exec while importing; a Ctrl-C that lands there used to make a
    # `python -m` run die by SIGINT (exit -2) after our handler had printed its message.
    (tmp_path / "interrupted_entry.py").write_text(
        "import sys\n"
        "from napari_selfdenoise import cli\n"
        "from napari_selfdenoise.cli import info\n"
        "info.cmd_info = lambda args: exec('raise KeyboardInterrupt')\n"
        "sys.exit(cli.main(['info', 'any.sdmodel']))\n")
    proc = subprocess.run([sys.executable, "-m", "interrupted_entry"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("selfdenoise: error: interrupted")


# ------------------------------------------------------------------------------ bad input


@pytest.fixture
def bad(tmp_path):
    """A folder of bad inputs (and one good one); returns (folder, listing before the command)."""
    tifffile.imwrite(tmp_path / "good.tif", noisy_image())
    tifffile.imwrite(tmp_path / "pixel.tif", np.zeros((1, 1), np.float32))
    nan = noisy_image()
    nan[10, 10] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", nan)
    np.save(tmp_path / "complex.npy", np.zeros((64, 64), np.complex64))
    np.save(tmp_path / "bool.npy", np.zeros((64, 64), bool))
    (tmp_path / "notamodel.sdmodel").write_text("this is not a model")
    return tmp_path, listing(tmp_path)


TRAIN_BAD = {
    "missing file": (["missing.tif"], "not found"),
    "axes length": (["good.tif", "--axes", "ZYX"], "dimensions"),
    "axes letters": (["good.tif", "--axes", "QX"], "letters"),
    "one pixel": (["pixel.tif"], "too small"),
    "nan": (["nan.tif"], "nan"),
    "complex dtype": (["complex.npy"], "complex"),
    "bool dtype": (["bool.npy"], "bool"),
    "patch too big": (["good.tif", "--patch", "128"], "--patch"),
    "unknown method": (["good.tif", "--method", "nope"], "n2v2"),
    "unknown option": (["good.tif", "--option", "nope=1"], "option"),
    "bad option syntax": (["good.tif", "--option", "nope"], "KEY=VALUE"),
    "zero steps": (["good.tif", "--steps", "0"], "steps"),
}


@pytest.mark.parametrize("case", list(TRAIN_BAD))
def test_train_bad_input(bad, case):
    folder, before = bad
    args, message = TRAIN_BAD[case]
    fast = ["--steps", "5", "--patch", "32", "--batch", "2"] if "--patch" not in args and "--steps" not in args \
        else []
    proc = run("train", *args, *fast, "--out", "model.sdmodel", cwd=folder)
    assert_clean_failure(proc, folder, before, message)


@pytest.mark.parametrize("method", ["nnet", "auto"])
def test_a_badly_typed_option_is_one_line(bad, method):
    # Method options are checked against the types of the method's defaults (auto: every candidate's),
    # before any training: "abc" for nnet's mixture used to end in a ValueError traceback.
    folder, before = bad
    proc = run("train", "good.tif", "--method", method, "--option", "mixture=abc", "--steps", "5", "--patch", "32",
               "--batch", "2", "--out", "model.sdmodel", cwd=folder)
    last = assert_clean_failure(proc, folder, before, "mixture")
    assert "whole number" in last and "'abc'" in last


def test_train_patch_error_suggests_smaller_patch(bad):
    folder, before = bad
    last = assert_clean_failure(run("train", "good.tif", "--patch", "256", "--out", "m.sdmodel", cwd=folder),
                                folder, before)
    assert "--patch 96" in last


def test_train_output_folder_missing(bad):
    folder, before = bad
    proc = run("train", "good.tif", "--steps", "5", "--out", "nowhere/model.sdmodel", cwd=folder)
    assert_clean_failure(proc, folder, before, "does not exist")


def test_train_inputs_with_different_axes(bad):
    folder, _ = bad
    tifffile.imwrite(folder / "movie.ome.tif", np.stack([noisy_image()] * 2), ome=True, metadata={"axes": "TYX"})
    before = listing(folder)
    proc = run("train", "good.tif", "movie.ome.tif", "--steps", "5", "--out", "m.sdmodel", cwd=folder)
    assert_clean_failure(proc, folder, before, "different axes")


def test_model_that_is_not_a_model(bad):
    folder, before = bad
    assert_clean_failure(run("predict", "notamodel.sdmodel", "good.tif", "--out", "o.tif", cwd=folder),
                         folder, before, "not a napari-selfdenoise model")
    assert_clean_failure(run("info", "notamodel.sdmodel", cwd=folder), folder, before, "model")
    assert_clean_failure(run("predict", "missing.sdmodel", "good.tif", "--out", "o.tif", cwd=folder),
                         folder, before, "not found")


PREDICT_BAD = {
    "missing file": (["missing.tif"], "not found"),
    "axes length": (["good.tif", "--axes", "ZYX"], "dimensions"),
    "axes letters": (["good.tif", "--axes", "YXW"], "letters"),
    "one pixel": (["pixel.tif"], "too small"),
    "nan": (["nan.tif"], "nan"),
    "complex dtype": (["complex.npy"], "complex"),
    "bool dtype": (["bool.npy"], "bool"),
    # the second input is bad: nothing may be written for the first either
    "second input bad": (["good.tif", "nan.tif"], "nan"),
}


@pytest.mark.parametrize("case", list(PREDICT_BAD))
def test_predict_bad_input(shared, bad, case):
    folder, before = bad
    args, message = PREDICT_BAD[case]
    out = "out" if len([a for a in args if not a.startswith("-") and "." in a]) > 1 else "out.ome.tif"
    proc = run("predict", shared / "model.sdmodel", *args, "--out", out, cwd=folder)
    assert_clean_failure(proc, folder, before, message)


def test_predict_output_folder_missing(shared, bad):
    folder, before = bad
    proc = run("predict", shared / "model.sdmodel", "good.tif", "--out", "nowhere/o.ome.tif", cwd=folder)
    assert_clean_failure(proc, folder, before, "does not exist")


def test_predict_would_overwrite_input(shared, bad):
    folder, before = bad
    proc = run("predict", shared / "model.sdmodel", "good.tif", "--out", "good.tif", cwd=folder)
    assert_clean_failure(proc, folder, before, "overwrite")


def test_noise_std_needs_an_nnet_model(shared, bad):
    folder, before = bad
    proc = run("predict", shared / "model.sdmodel", "good.tif", "--out", "o.ome.tif",
               "--noise-std", "std.ome.tif", cwd=folder)
    last = assert_clean_failure(proc, folder, before)
    assert last == ("selfdenoise: error: model model.sdmodel (method n2v2) has no noise-std output; "
                    "only nnet models do")
    assert "tile" not in proc.stderr  # failed before predicting anything


@pytest.mark.parametrize("args, message", [
    (["missing.tif"], "not found"),
    (["pixel.tif"], "too small"),
    (["nan.tif"], "nan"),
    (["bool.npy"], "bool"),
    (["good.tif", "--axes", "ZYX"], "dimensions"),
    (["good.tif", "--denoisers", "median,nope"], "nope"),
    (["good.tif", "--report", "nowhere/r.json"], "does not exist"),
])
def test_calibrate_bad_input(bad, args, message):
    folder, before = bad
    proc = run("calibrate", *args, "--out", "cal.ome.tif", cwd=folder)
    assert_clean_failure(proc, folder, before, message)


def test_usage_error_is_one_line(bad):
    folder, before = bad
    proc = run("train", "good.tif", cwd=folder)  # --out missing
    assert_clean_failure(proc, folder, before, "--out")
    proc = run("predict", cwd=folder)
    assert_clean_failure(proc, folder, before)


def test_nnet_mixture_noise_std_and_noise_curve(shared, tmp_path):
    model = tmp_path / "nnet.sdmodel"
    proc = run("train", shared / "a.tif", "--method", "nnet", "--mixture", "2", "--axes", "YX", *FAST,
               "--out", model)
    assert proc.returncode == 0, proc.stderr
    info = run("info", model)
    assert "nnet" in info.stdout
    den, std = tmp_path / "den.ome.tif", tmp_path / "std.ome.tif"
    proc = run("predict", model, shared / "a.tif", "--out", den, "--noise-std", std)
    assert proc.returncode == 0, proc.stderr
    noise_map = tifffile.imread(std)
    assert noise_map.shape == (96, 96) and noise_map.dtype == np.float32
    assert (noise_map > 0).all()
    curve = tmp_path / "curve.csv"
    proc = run("noise", model, shared / "a.tif", "--out", curve, "--bins", "5")
    assert proc.returncode == 0, proc.stderr
    lines = curve.read_text().splitlines()
    assert lines[0].split(",") == ["signal", "std", "skewness", "count", "predicted_std"]
    rows = [list(map(float, line.split(","))) for line in lines[1:]]
    assert 2 <= len(rows) <= 5
    assert all(r[1] > 0 and r[4] > 0 for r in rows)


def test_train_and_predict_thin_volume(tmp_path):
    """Five coarse Z planes (fewer than 8): a 3D model that pools only Y and X, written and applied."""
    clean = fluorescence_image((20, 64, 64), seed=3)[::4]
    tifffile.imwrite(tmp_path / "thin.tif", add_noise(clean, sigma=0.1, seed=4), metadata={"axes": "ZYX"})
    proc = run("train", tmp_path / "thin.tif", "--axes", "ZYX", "--method", "n2s", *FAST,
               "--out", tmp_path / "thin.sdmodel")
    assert proc.returncode == 0, proc.stderr
    from napari_selfdenoise.core.denoiser import Denoiser

    assert Denoiser.load(tmp_path / "thin.sdmodel").architecture["z_levels"] == 0
    proc = run("predict", tmp_path / "thin.sdmodel", tmp_path / "thin.tif", "--out", tmp_path / "den.tif")
    assert proc.returncode == 0, proc.stderr
    denoised = tifffile.imread(tmp_path / "den.tif")
    assert denoised.shape == (5, 64, 64) and denoised.dtype == np.float32 and np.isfinite(denoised).all()
    before = listing(tmp_path)
    proc = run("train", tmp_path / "thin.tif", "--axes", "ZYX", *FAST, "--depth", "3", "--z-levels", "3",
               "--out", tmp_path / "forced.sdmodel")
    assert_clean_failure(proc, tmp_path, before, "use --z-levels 2 or fewer")


# ------------------------------------------------------------------------------ bioimage.io packages


@pytest.fixture(scope="module")
def package(shared):
    """``selfdenoise export MODEL --bmz OUT.zip`` of the shared model (the exact contract)."""
    out = shared / "model.zip"
    proc = run("export", shared / "model.sdmodel", "--bmz", out)
    assert proc.returncode == 0, proc.stderr
    assert "model.zip" in proc.stdout.strip().splitlines()[-1]
    return out


def test_export_writes_a_bioimageio_package(package):
    import zipfile

    import yaml

    with zipfile.ZipFile(package) as archive:
        names = set(archive.namelist())
        rdf = yaml.safe_load(archive.read("rdf.yaml"))
    assert {"rdf.yaml", "weights.pt", "weights_torchscript.pt", "test_input.npy", "test_output_denoised.npy",
            "cover.png", "README.md", "selfdenoise.sdmodel"} <= names
    assert rdf["type"] == "model" and rdf["format_version"].startswith("0.5")
    assert set(rdf["weights"]) == {"pytorch_state_dict", "torchscript"}


def test_export_with_metadata_and_validation(shared, tmp_path):
    pytest.importorskip("bioimageio.core")
    out = tmp_path / "named.zip"
    proc = run("export", shared / "model.sdmodel", "--bmz", out, "--name", "Cells N2V2", "--author",
               "Ada Lovelace <ada@example.org>", "--author", "Charles Babbage", "--license", "MIT",
               "--tag", "cells", "--input", shared / "b.tif", "--validate")
    assert proc.returncode == 0, proc.stderr
    assert "bioimageio.core test passed" in proc.stdout
    assert listing(tmp_path) == {"named.zip"}


def test_predict_and_info_with_a_package(shared, package, tmp_path):
    out = tmp_path / "den.ome.tif"
    proc = run("predict", package, shared / "a.tif", "--out", out)
    assert proc.returncode == 0, proc.stderr
    reference = tmp_path / "ref.ome.tif"
    assert run("predict", shared / "model.sdmodel", shared / "a.tif", "--out", reference).returncode == 0
    assert np.array_equal(tifffile.imread(out), tifffile.imread(reference))
    info = run("info", package)
    assert info.returncode == 0 and re.search(r"method:\s+n2v2", info.stdout)


def test_train_from_a_model_fine_tunes_it(shared, package, tmp_path):
    out = tmp_path / "tuned.sdmodel"
    proc = run("train", shared / "b.tif", "--from", package, "--steps", "4", "--out", out)
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert "4 more steps (24 in all)" in last, last
    info = run("info", out)
    assert re.search(r"trained:\s+24 steps", info.stdout) and re.search(r"patch 32, batch 4", info.stdout)


def test_export_bad_requests(shared, bad):
    folder, before = bad
    model = shared / "model.sdmodel"
    cases = [
        (["export", model, "--bmz", "out.txt"], ".zip"),
        (["export", model, "--bmz", "nowhere/out.zip"], "does not exist"),
        (["export", "missing.sdmodel", "--bmz", "out.zip"], "not found"),
        (["export", "notamodel.sdmodel", "--bmz", "out.zip"], "not a napari-selfdenoise model"),
        (["export", model, "--bmz", "out.zip", "--name", "a/b"], "name"),
        (["export", model, "--bmz", "out.zip", "--input", "nan.tif"], "nan"),
        (["export", model], "--bmz"),
    ]
    for args, message in cases:
        assert_clean_failure(run(*args, cwd=folder), folder, before, message)


def test_export_into_a_read_only_folder(shared, bad):
    folder, _ = bad
    locked = folder / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        before = listing(folder)
        proc = run("export", shared / "model.sdmodel", "--bmz", locked / "m.zip", cwd=folder)
        if os.geteuid() != 0:  # root may write anyway
            assert_clean_failure(proc, folder, before, "not writable")
    finally:
        locked.chmod(0o755)


def test_train_from_bad_requests(shared, bad, package):
    folder, before = bad
    assert_clean_failure(run("train", "good.tif", "--from", package, "--method", "n2s", "--out", "m.sdmodel",
                             cwd=folder), folder, before, "keeps its method")
    assert_clean_failure(run("train", "good.tif", "--from", package, "--features", "64", "--out", "m.sdmodel",
                             cwd=folder), folder, before, "keeps the network")
    np.save(folder / "stack.npy", np.stack([noisy_image()[:64, :64]] * 16))
    before = listing(folder)
    assert_clean_failure(run("train", "stack.npy", "--axes", "ZYX", "--from", package, "--out", "m.sdmodel",
                             cwd=folder), folder, before, "2D")
