"""core/io/atomic.py (the one atomic write) and core/io/outputs.py (the one output rule), in-process."""

from __future__ import annotations

import errno
import os
import signal

import pytest

from napari_selfdenoise.core.errors import SelfDenoiseError
from napari_selfdenoise.core.io.atomic import atomic_write, check_free_space, interrupts_deferred
from napari_selfdenoise.core.io.outputs import output_folder, plan_output


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_a_file_appears_only_when_complete_with_the_usual_permissions(tmp_path):
    target = tmp_path / "out.bin"
    with atomic_write(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.bin.") and tmp.name.endswith(".part")
        tmp.write_bytes(b"data")
        os.chmod(tmp, 0o600)  # as tempfile makes them
        assert not target.exists()
    umask = os.umask(0)
    os.umask(umask)
    assert target.read_bytes() == b"data" and (target.stat().st_mode & 0o777) == 0o666 & ~umask
    assert _names(tmp_path) == ["out.bin"]


def test_a_folder_replaces_an_existing_one_only_when_complete(tmp_path):
    target = tmp_path / "out.zarr"
    target.mkdir()
    (target / "old").write_text("old")
    with atomic_write(target) as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("new")
        assert (target / "old").exists()
    assert _names(target) == ["new"] and _names(tmp_path) == ["out.zarr"]


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt(), SystemExit(143)],
                         ids=["error", "ctrl-c", "exit"])
@pytest.mark.parametrize("kind", ["file", "folder"])
def test_any_failure_removes_the_temporary_output_and_keeps_the_old_one(tmp_path, error, kind):
    target = tmp_path / "out"
    target.write_text("old") if kind == "file" else target.mkdir()
    with pytest.raises(type(error)), atomic_write(target) as tmp:
        if kind == "file":
            tmp.write_text("half")
        else:
            (tmp / "sub").mkdir(parents=True)
            (tmp / "sub" / "chunk").write_text("half")
        raise error
    assert _names(tmp_path) == ["out"]
    assert target.read_text() == "old" if kind == "file" else _names(target) == []


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   OSError("1048576 requested and 511944 written")], ids=["ENOSPC", "short write"])
def test_a_full_disk_is_one_message(tmp_path, error):
    with pytest.raises(SelfDenoiseError, match=r"the disk is full while writing .*out.tif; free space and try again"), \
            atomic_write(tmp_path / "out.tif") as tmp:
        tmp.write_bytes(b"half")
        raise error
    assert _names(tmp_path) == []


def test_an_existing_output_is_kept_without_overwrite(tmp_path):
    target = tmp_path / "out"
    target.write_text("old")
    with pytest.raises(SelfDenoiseError, match="exists"), atomic_write(target, overwrite=False) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "old" and _names(tmp_path) == ["out"]


def test_free_space_is_checked_with_sizes_people_read(tmp_path, monkeypatch):
    from napari_selfdenoise.core.io import atomic

    usage = type("Usage", (), {"free": 500_000_000})()
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda path: usage)
    with pytest.raises(SelfDenoiseError, match=f"not enough free space on {tmp_path}: needs 1.2 GB, 0.5 GB free"):
        check_free_space(tmp_path / "out.tif", 1_200_000_000)
    check_free_space(tmp_path / "out.tif", 100_000_000)


def test_interrupts_are_held_until_the_write_is_done():
    done = []
    with pytest.raises(KeyboardInterrupt), interrupts_deferred():
        signal.raise_signal(signal.SIGINT)
        done.append("the write finished")
    assert done == ["the write finished"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_plan_output_refuses_an_input_even_with_overwrite(tmp_path):
    source = tmp_path / "in.tif"
    source.write_bytes(b"input")
    (tmp_path / "link.tif").symlink_to(source)
    for name in ("in.tif", "link.tif", "./in.tif"):
        with pytest.raises(SelfDenoiseError, match="would overwrite the input"):
            plan_output(tmp_path / name, inputs=[source], overwrite=True)
    with pytest.raises(SelfDenoiseError, match="exists; pass --overwrite"):
        plan_output(tmp_path / "link.tif", inputs=[tmp_path / "other.tif"])
    assert plan_output(tmp_path / "new.tif", inputs=[source, None]) == tmp_path / "new.tif"
    with pytest.raises(SelfDenoiseError, match="is a folder; give a file name"):
        plan_output(tmp_path, inputs=[source])
    with pytest.raises(SelfDenoiseError, match="use a name ending in .zip"):
        plan_output(tmp_path / "p.txt", suffixes=(".zip",))
    with pytest.raises(SelfDenoiseError, match="nowhere does not exist"):
        plan_output(tmp_path / "nowhere" / "x.tif")


def test_an_output_folder_made_for_nothing_is_removed(tmp_path):
    with pytest.raises(RuntimeError), output_folder(tmp_path / "results"):
        raise RuntimeError("the first input failed")
    assert _names(tmp_path) == []
    with pytest.raises(RuntimeError), output_folder(tmp_path / "results") as folder:
        (folder / "a_denoised.ome.tif").write_text("complete")
        raise RuntimeError("the second input failed")
    assert _names(tmp_path / "results") == ["a_denoised.ome.tif"]  # finished outputs stay
