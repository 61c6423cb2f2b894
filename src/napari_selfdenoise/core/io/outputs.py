"""Output planning: the one rule for every command that writes, checked before any work starts.

Never write over an input (not even with ``--overwrite``); an existing output needs ``--overwrite``;
the output's folder must exist and be writable; a folder of outputs (the demo's, predict's with
several inputs) is created only when something is written into it. ``plan_output`` plans one output,
``plan_outputs`` one per input (``output_path_for`` names them); ``is_zarr_path`` is the one "is this
a zarr" rule for names (``io.zarr_images.is_zarr_store`` looks inside a folder that exists).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import SelfDenoiseError


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


def plan_outputs(inputs, out, *, suffix: str = "_denoised", extension: str = ".ome.tif",
                 overwrite: bool = False, also_read=(), suffixes=None) -> list[Path]:
    """One planned output per input (``plan_output`` on each: never an input or one of ``also_read``,
    an existing one only with ``overwrite``), no two inputs on one file. One input: ``out`` is the file
    (``suffixes``: its allowed endings), unless it is an existing folder that is not a zarr; else ``out``
    is a folder, made only when written (``output_folder``), of '<input stem><suffix><extension>'."""
    out = Path(out)
    n = len(inputs)
    sources = [*inputs, *also_read]
    if n == 1 and (not out.is_dir() or is_zarr_path(out)):
        return [plan_output(output_path_for(inputs[0], out, 1), inputs=sources, overwrite=overwrite,
                            suffixes=suffixes)]
    if out.exists() and not out.is_dir():
        raise SelfDenoiseError(f"{out} is a file; with {n} inputs the output must be a folder")
    plan_output(out, inputs=sources, folder=True, kind="output folder")
    targets, seen = [], {}
    for path in inputs:
        target = output_path_for(path, out, n, extension, create=False, suffix=suffix)
        key = str(target.resolve())
        if key in seen:
            raise SelfDenoiseError(f"{seen[key]} and {path} would both be written to {target}; rename one")
        seen[key] = path
        if out.is_dir():  # else nothing can be there yet
            plan_output(target, inputs=sources, overwrite=overwrite)
        targets.append(target)
    return targets


def output_path_for(input_path, out, n_inputs: int, extension: str = ".ome.tif", create: bool = True,
                    suffix: str = "_denoised") -> Path:
    """Where the result for ``input_path`` goes.

    One input and ``out`` not an existing folder (a zarr folder counts as a file): ``out`` is the file.
    Otherwise ``out`` is a folder (created if missing, unless ``create=False``: the CLI creates it only
    when it writes) holding '<input stem><suffix><extension>'.
    """
    out = Path(out)
    if n_inputs == 1 and (not out.is_dir() or is_zarr_path(out)):
        target = out
    else:
        if out.exists() and not out.is_dir():
            raise SelfDenoiseError(f"{out} is a file; with {n_inputs} inputs the output must be a folder")
        if create:
            out.mkdir(parents=True, exist_ok=True)
        target = out / f"{image_stem(Path(input_path))}{suffix}{extension}"
    if same_file(target, input_path):
        raise SelfDenoiseError(f"the output {target} would overwrite the input; choose another")
    return target


def image_stem(p: Path) -> str:
    """File name without its image extension ('a.ome.tif' -> 'a')."""
    name = p.name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".npy", ".ome.zarr", ".zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return p.stem


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
