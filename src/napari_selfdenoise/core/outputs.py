"""Output planning: the one rule for every command that writes, checked before any work starts.

Never write over an input (not even with ``--overwrite``); an existing output needs ``--overwrite``;
the output's folder must exist and be writable; a folder of outputs (the demo's, predict's with
several inputs) is created only when something is written into it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import SelfDenoiseError


def plan_output(path, *, inputs=(), overwrite: bool = False, kind: str = "output", suffixes=None,
                folder: bool = False) -> Path:
    """Check that ``path`` may be written and return it as a ``Path``.

    ``inputs``: the files the command reads (``None`` entries are skipped); ``kind`` names the output in
    messages ("model file", "report", ...); ``suffixes``: the endings allowed (lower case). A file output
    that is a folder is refused, except a zarr (a folder written as one output). ``folder=True``: ``path``
    is a folder of outputs; it may exist (its files are then planned one by one) or its parent must.
    """
    path = Path(path)
    for source in inputs:
        if source is not None and same_file(path, source):
            raise SelfDenoiseError(f"the {kind} {path} would overwrite the input {source}; choose another name")
    if folder:
        if path.exists() and not path.is_dir():
            raise SelfDenoiseError(f"{path} is a file; give a folder for the {kind}")
        _check_writable(path if path.is_dir() else path.parent, path)
        return path
    if path.is_dir() and not is_zarr_path(path):
        raise SelfDenoiseError(f"the {kind} {path} is a folder; give a file name")
    if suffixes and not path.name.lower().endswith(tuple(suffixes)):
        raise SelfDenoiseError(f"cannot write {path}: use a name ending in {', '.join(suffixes)}")
    _check_writable(path.parent, path)
    if path.exists() and not overwrite:
        raise SelfDenoiseError(f"{path} exists; pass --overwrite to replace it")
    return path


@contextmanager
def output_folder(folder) -> Iterator[Path]:
    """Make a planned folder of outputs for the block that writes them; if the block fails before any
    output is in it, remove it again (outputs already finished in it stay: each is complete)."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(exist_ok=True)
    try:
        yield folder
    except BaseException:
        if created and not any(folder.iterdir()):
            folder.rmdir()
        raise


def same_file(a, b) -> bool:
    """The same file or folder: by identity when both exist (hard and symbolic links too), else by path."""
    a, b = Path(a), Path(b)
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return a.resolve() == b.resolve()


def is_zarr_path(path) -> bool:
    return str(path).lower().rstrip("/\\").endswith((".ome.zarr", ".zarr"))


def _check_writable(folder: Path, path: Path) -> None:
    if not folder.is_dir():
        raise SelfDenoiseError(f"cannot write {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise SelfDenoiseError(f"cannot write {path}: the folder {folder} is not writable")
