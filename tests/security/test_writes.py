"""One writing rule for every command, through the CLI in subprocesses (``python -m napari_selfdenoise.cli``):

- the matrix: every command that writes x {output == an input, output exists without / with --overwrite,
  output folder missing} -> exit 2 with one line (or 0 with --overwrite), inputs unchanged (sha256), nothing
  left behind (hidden '.part' names included);
- SIGINT and SIGTERM during a streamed prediction, SIGTERM during ``export --validate`` -> exit 130 / 143, one
  line, nothing left behind;
- a full disk (a 2 MB tmpfs, where mounting one is allowed): predict into OME-Zarr and OME-TIFF, train, demo
  -> one line that says so, nothing left behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from napari_selfdenoise.core.data.synthetic import add_noise, fluorescence_image
from napari_selfdenoise.core.denoiser import Denoiser
from napari_selfdenoise.core.io.images import write_image

FAST_TRAIN = ["--steps", "2", "--patch", "32", "--batch", "2", "--features", "8", "--depth", "1"]


def _noisy(shape=(64, 64), seed=0) -> np.ndarray:
    return add_noise(fluorescence_image(shape, seed=seed), "gaussian", sigma=0.1, seed=seed + 1)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A tiny N-net (it has a noise-std output, so --noise-std can be tried too)."""
    path = tmp_path_factory.mktemp("model") / "nnet.sdmodel"
    Denoiser("nnet", "YX", patch=32, batch=2, features=8, depth=1, steps=2, seed=0).fit(_noisy()).save(path)
    return path


@pytest.fixture
def work(tmp_path, model_file) -> Path:
    """A folder with the model, an input image and an existing output of each kind."""
    shutil.copy(model_file, tmp_path / "m.sdmodel")
    write_image(tmp_path / "in.tif", _noisy(seed=3), "YX")
    for name in ("old.sdmodel", "old.ome.tif", "old.json", "old.csv", "old.zip"):
        (tmp_path / name).write_bytes(b"an older result")
    return tmp_path


# (command line with {out} for the output under test, the inputs it reads)
COMMANDS = {
    "train": (["train", "in.tif", *FAST_TRAIN, "--out", "{out}"], "old.sdmodel"),
    "train --from": (["train", "in.tif", "--from", "m.sdmodel", "--steps", "2", "--out", "{out}"], "old.sdmodel"),
    "predict": (["predict", "m.sdmodel", "in.tif", "--out", "{out}"], "old.ome.tif"),
    "predict --noise-std": (["predict", "m.sdmodel", "in.tif", "--out", "d.ome.tif", "--noise-std", "{out}"],
                            "old.ome.tif"),
    "calibrate": (["calibrate", "in.tif", "--denoisers", "median", "--out", "{out}"], "old.ome.tif"),
    "calibrate --report": (["calibrate", "in.tif", "--denoisers", "median", "--out", "c.ome.tif",
                            "--report", "{out}"], "old.json"),
    "noise": (["noise", "m.sdmodel", "in.tif", "--out", "{out}"], "old.csv"),
    "export": (["export", "m.sdmodel", "--bmz", "{out}"], "old.zip"),
}
INPUTS = ("in.tif", "m.sdmodel")


def _command(case: str, out: str) -> list[str]:
    return [out if a == "{out}" else a for a in COMMANDS[case][0]]


def _digests(folder: Path, digest) -> dict:
    return {name: digest(folder / name) for name in INPUTS}


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "--overwrite"])
@pytest.mark.parametrize("case", list(COMMANDS))
def test_an_output_that_is_an_input_is_refused(work, case, overwrite, run_cli, one_line_error, digest,
                                               tree_listing):
    source = "m.sdmodel" if case in ("export", "train --from") else "in.tif"
    before, sums = tree_listing(work), _digests(work, digest)
    result = run_cli(*_command(case, source), *(["--overwrite"] if overwrite else []), cwd=work)
    one_line_error(result, "would overwrite the input")
    assert _digests(work, digest) == sums
    assert tree_listing(work) == before


@pytest.mark.parametrize("case", list(COMMANDS))
def test_an_existing_output_needs_overwrite(work, case, run_cli, one_line_error, digest, tree_listing):
    existing = COMMANDS[case][1]
    before, sums = tree_listing(work), _digests(work, digest)
    one_line_error(run_cli(*_command(case, existing), cwd=work), f"{existing} exists; pass --overwrite")
    assert (work / existing).read_bytes() == b"an older result"
    assert _digests(work, digest) == sums and tree_listing(work) == before


@pytest.mark.parametrize("case", list(COMMANDS))
def test_overwrite_replaces_an_existing_output(work, case, run_cli, digest, tree_listing):
    existing = COMMANDS[case][1]
    sums = _digests(work, digest)
    result = run_cli(*_command(case, existing), "--overwrite", "-q", cwd=work)
    assert result.rc == 0, result.stderr[-3000:]
    assert (work / existing).read_bytes() != b"an older result"
    assert _digests(work, digest) == sums
    assert not [p for p in tree_listing(work) if p.endswith(".part") or p.startswith(".")]


@pytest.mark.parametrize("case", list(COMMANDS))
def test_a_missing_output_folder_is_refused(work, case, run_cli, one_line_error, digest, tree_listing):
    before, sums = tree_listing(work), _digests(work, digest)
    out = "nowhere/" + COMMANDS[case][1].replace("old", "new")
    one_line_error(run_cli(*_command(case, out), cwd=work), "nowhere does not exist")
    assert _digests(work, digest) == sums and tree_listing(work) == before


def test_demo_follows_the_same_rule(tmp_path, run_cli, one_line_error, tree_listing):
    folder = tmp_path / "demo"
    folder.mkdir()
    (folder / "model.sdmodel").write_bytes(b"an older result")
    before = tree_listing(tmp_path)
    one_line_error(run_cli("demo", "--steps", "2", "--out", folder, "-q"), "model.sdmodel exists; pass --overwrite")
    one_line_error(run_cli("demo", "--steps", "2", "--out", tmp_path / "nowhere" / "demo", "-q"),
                   "nowhere does not exist")
    assert tree_listing(tmp_path) == before
    result = run_cli("demo", "--steps", "2", "--out", folder, "-q", "--overwrite")
    assert result.rc == 0, result.stderr[-3000:]
    assert (folder / "model.sdmodel").read_bytes() != b"an older result"
    assert tree_listing(folder) == {"noisy.ome.tif", "denoised.ome.tif", "clean.ome.tif", "model.sdmodel"}


def test_a_failed_prediction_leaves_no_new_output_folder(work, run_cli, one_line_error, tree_listing):
    write_image(work / "in2.tif", _noisy(seed=5), "YX")
    before = tree_listing(work)
    # --out is planned first (a new folder), then --noise-std is refused: a file, for two inputs
    one_line_error(run_cli("predict", "m.sdmodel", "in.tif", "in2.tif", "--out", "results", "--noise-std",
                           "old.ome.tif", cwd=work), "must be a folder")
    assert tree_listing(work) == before  # the folder is made only when an output is written


# ------------------------------------------------------------------------------ signals


def _start(args, cwd) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "napari_selfdenoise.cli", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_part(process: subprocess.Popen, folder: Path, timeout: float = 600) -> str:
    """Poll until a hidden '.part' output appears (the command is then writing); returns its name."""
    deadline = time.monotonic() + timeout  # a safety net against a hang, not a timing assertion
    while time.monotonic() < deadline:
        parts = [p.name for p in folder.iterdir() if p.name.endswith(".part")]
        if parts:
            return parts[0]
        assert process.poll() is None, process.communicate()
        time.sleep(0.02)
    process.kill()
    raise AssertionError("no .part output appeared")


@pytest.fixture
def big_input(work) -> Path:
    """An input that takes seconds to stream with a small tile (many tiles of one block)."""
    write_image(work / "big.tif", _noisy((512, 512), seed=7), "YX")
    return work / "big.tif"


@pytest.mark.parametrize("number, code, word", [(signal.SIGINT, 130, "interrupted"),
                                                (signal.SIGTERM, 143, "terminated")], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_a_streamed_prediction_leaves_nothing(work, big_input, number, code, word, digest,
                                                              tree_listing):
    before, sums = tree_listing(work), digest(big_input)
    process = _start(["predict", "m.sdmodel", big_input.name, "--out", "out.ome.zarr", "--tile", "16", "-q"], work)
    _wait_for_part(process, work)
    process.send_signal(number)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == code, stderr[-3000:]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith(f"selfdenoise: error: {word}"), stderr[-3000:]
    assert tree_listing(work) == before and digest(big_input) == sums


def test_sigterm_during_export_validation_leaves_nothing(work, digest, tree_listing):
    pytest.importorskip("bioimageio.core")
    before, sums = tree_listing(work), digest(work / "m.sdmodel")
    process = _start(["export", "m.sdmodel", "--bmz", "new.zip", "--validate"], work)
    for line in process.stdout:  # the package is written, and now being validated
        if line.startswith("testing the package"):
            break
    assert [p for p in os.listdir(work) if p.startswith(".new.zip.") and p.endswith(".part")]
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 143, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith("selfdenoise: error: terminated"), stderr[-3000:]
    assert tree_listing(work) == before and digest(work / "m.sdmodel") == sums


# ------------------------------------------------------------------------------ a full disk


@pytest.fixture
def small_disk(tmp_path) -> Path:
    """A 2 MB tmpfs (needs the right to mount: root, or a CI machine that allows it)."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here: cannot make a small file system")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({done.stderr.strip() or done.returncode})")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(disk: Path, leave: int) -> None:
    """Leave about ``leave`` bytes free on ``disk``."""
    free = shutil.disk_usage(disk).free
    (disk / "filler").write_bytes(b"\0" * max(0, free - leave))


def test_full_disk_streamed_zarr_prediction_leaves_no_part(work, small_disk, run_cli, one_line_error, digest,
                                                          tree_listing):
    # 1024 x 2048: two output chunks written at once, 8 MB of incompressible noise for a 2 MB disk
    write_image(work / "wide.tif", np.random.default_rng(0).normal(size=(1024, 2048)).astype("float32"), "YX")
    sums = digest(work / "wide.tif")
    result = run_cli("predict", "m.sdmodel", "wide.tif", "--out", small_disk / "out.ome.zarr", "-q", cwd=work)
    assert tree_listing(small_disk) == set()  # the '.out.ome.zarr.xxxx.part/' too
    one_line_error(result, "the disk is full while writing .*out.ome.zarr; free space and try again")
    assert digest(work / "wide.tif") == sums


def test_full_disk_tiff_output_is_refused_up_front(work, small_disk, run_cli, one_line_error, tree_listing):
    write_image(work / "large.tif", _noisy((1024, 1024)), "YX")  # a 4 MB float32 output for a 2 MB disk
    result = run_cli("predict", "m.sdmodel", "large.tif", "--out", small_disk / "out.ome.tif", "-q", cwd=work)
    one_line_error(result, r"not enough free space on .*disk: needs 4\.2 MB, 2\.1 MB free")
    assert tree_listing(small_disk) == set()


def test_full_disk_train_leaves_no_model(work, small_disk, run_cli, one_line_error, tree_listing):
    _fill(small_disk, 8 * 1024)  # the model file is ~50 KB
    before = tree_listing(small_disk)
    result = run_cli("train", "in.tif", *FAST_TRAIN, "--out", small_disk / "m.sdmodel", "-q", cwd=work)
    one_line_error(result, "the disk is full while writing .*m.sdmodel; free space and try again")
    assert tree_listing(small_disk) == before


def test_full_disk_demo_leaves_no_folder(small_disk, run_cli, one_line_error, tree_listing):
    _fill(small_disk, 1024 * 1024 + 300 * 1024)  # room for one or two of the 260 KB images, not all four files
    before = tree_listing(small_disk)
    result = run_cli("demo", "--steps", "2", "--out", small_disk / "demo", "-q")
    one_line_error(result, "(not enough free space on|the disk is full while writing)")
    assert tree_listing(small_disk) == before
