"""Atomic writes: the one place that writes a file or a folder under a hidden temporary name and
gives it its final name only when it is complete.

    with atomic_write(path) as tmp:      # tmp = '.NAME.xxxxxxxx.part' next to path, not created yet
        write(tmp)                       # a file or a folder (an OME-Zarr)
    # here path is complete; after any failure neither tmp nor a changed path is left

A failure is anything that leaves the block early: an exception, Ctrl-C (KeyboardInterrupt), SIGTERM
(the CLI raises it as an exception), a generator closed half-way. A full disk, which shows up as
ENOSPC wherever it happens, becomes one message that says so. Outputs of known size are checked
against the free space before anything is written (``check_free_space``).
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import SelfDenoiseError

# numpy's message for a short write (ndarray.tofile, which tifffile uses): a full disk without an errno.
_SHORT_WRITE = " requested and "


@contextmanager
def atomic_write(path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` to write a file or a folder to; when the block ends
    normally, move it to ``path`` (an existing ``path`` only with ``overwrite``), else remove it."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        put_in_place(tmp, path, overwrite)
    except BaseException as err:
        discard(tmp)
        if is_disk_full(err):
            raise disk_full(path) from None
        raise


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends (in the main thread; elsewhere a no-op). For a write
    handed to another thread: an interrupt raised here would not stop it, and the cleanup would race it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    handlers = {}
    for number in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(number) is not None:  # None: set outside Python, it could not be put back
            handlers[number] = signal.signal(number, lambda received, frame: caught.append(received))
    try:
        yield
    finally:
        for number, handler in handlers.items():
            signal.signal(number, handler)
        if caught:
            signal.raise_signal(caught[0])  # now, to the handler that was there


def temporary_name(path: Path) -> Path:
    """'.NAME.xxxxxxxx.part' in the same folder: hidden, unique, and on the same file system, so the
    final rename is atomic."""
    return path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.part"


def put_in_place(tmp: Path, final: Path, overwrite: bool = True) -> None:
    """Give the finished ``tmp`` its final name; an existing final file or folder goes only after that."""
    if final.exists() and not overwrite:
        raise SelfDenoiseError(f"{final} exists; pass --overwrite (overwrite=True) to replace it")
    if final.is_dir() and not tmp.is_dir():
        raise SelfDenoiseError(f"{final} is a folder; remove it or choose another output name")
    if tmp.is_file():  # the usual permissions, whatever created it (tempfile makes private files)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
    aside = None
    if final.is_dir():  # a folder cannot be replaced by a rename: move the old one aside first
        aside = temporary_name(final).with_suffix(".old")
        os.replace(final, aside)
    os.replace(tmp, final)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def discard(tmp: Path) -> None:
    """Remove a temporary file or folder (what a failed write left), if there is one."""
    if tmp.is_dir() and not tmp.is_symlink():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.unlink(missing_ok=True)


def is_disk_full(err: BaseException) -> bool:
    if not isinstance(err, OSError):
        return False
    return err.errno in (errno.ENOSPC, errno.EDQUOT) or (err.errno is None and _SHORT_WRITE in str(err))


def disk_full(path) -> SelfDenoiseError:
    return SelfDenoiseError(f"the disk is full while writing {path}; free space and try again")


def check_free_space(path, needed: int) -> None:
    """Refuse, before writing, an output of ``needed`` bytes that the disk of ``path``'s folder cannot
    hold (with a margin for the file system's own bookkeeping). A folder not made yet (a planned folder
    of outputs) is measured on the nearest one that exists."""
    folder = next(p for p in Path(path).absolute().parents if p.exists())
    free = shutil.disk_usage(folder).free
    if free < needed * 1.02 + 1024**2:
        raise SelfDenoiseError(f"not enough free space on {folder}: needs {_size(needed)}, {_size(free)} free")


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale / 10:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"
