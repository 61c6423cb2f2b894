"""Model files: one zip holding a JSON header and safetensors weights. Loading never unpickles.

Layout of ``model.sdmodel`` (a plain zip; open it with any unzip tool):
    selfdenoise.json      format, format_version, package version, config, normalisation, architecture, history
    weights.safetensors   the network's best-validation weights
    training.safetensors  optional: optimizer moments, to resume training (scalars live in the JSON)
    sample.safetensors    optional: a small crop of the training data in raw units (canonical
                          (1, C, [Z,] Y, X)), for the test tensors and cover of a bioimage.io export

Every zip this package reads (model files, bioimage.io packages) goes through ``open_zip``: entry names
that could escape a folder when unpacked (``../x``, absolute paths, drive letters, backslashes) and
entries that inflate implausibly (zip bombs) are refused before anything is read.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .. import __version__
from .errors import ModelFileError, SelfDenoiseError

FORMAT = "napari-selfdenoise-model"
FORMAT_VERSION = 1
HEADER, WEIGHTS, TRAINING = "selfdenoise.json", "weights.safetensors", "training.safetensors"
SAMPLE = "sample.safetensors"
# Refuse absurd entries (zip bombs): no model of ours is near this.
_MAX_ENTRY_BYTES = 2 * 1024**3
_MAX_TOTAL_BYTES = 8 * 1024**3
_MAX_ENTRIES = 10_000
_MAX_RATIO = 200


@dataclass
class ModelContents:
    header: dict[str, Any]
    weights: dict[str, torch.Tensor]
    training: dict[str, torch.Tensor] = field(default_factory=dict)
    sample: dict[str, torch.Tensor] = field(default_factory=dict)


def model_bytes(header: dict[str, Any], weights: dict[str, torch.Tensor],
                training: dict[str, torch.Tensor] | None = None,
                sample: dict[str, torch.Tensor] | None = None) -> bytes:
    """The model file's bytes (what ``save_model`` writes), e.g. to attach to a bioimage.io package."""
    buffer = io.BytesIO()
    _write_zip(buffer, header, weights, training, sample)
    return buffer.getvalue()


def _write_zip(target, header, weights, training, sample) -> None:
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "package_version": __version__, **header}
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(HEADER, json.dumps(header, indent=2, default=_json_default))
        archive.writestr(WEIGHTS, save_safetensors(_contiguous(weights)))
        if training:
            archive.writestr(TRAINING, save_safetensors(_contiguous(training)))
        if sample:
            archive.writestr(SAMPLE, save_safetensors(_contiguous(sample)))


def save_model(path, header: dict[str, Any], weights: dict[str, torch.Tensor],
               training: dict[str, torch.Tensor] | None = None,
               sample: dict[str, torch.Tensor] | None = None) -> Path:
    """Write atomically: a temporary file in the same folder, renamed when complete."""
    path = Path(path)
    if not path.parent.exists():
        raise SelfDenoiseError(f"the folder {path.parent} does not exist; create it first")
    tmp = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".part", delete=False)
    tmp.close()
    try:
        _write_zip(tmp.name, header, weights, training, sample)
        publish(tmp.name, path)
    except BaseException:
        Path(tmp.name).unlink(missing_ok=True)
        raise
    return path


def publish(tmp, path) -> None:
    """Give a finished temporary file the usual permissions (it was created private) and move it into place."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


ZIP_ERRORS = (zipfile.BadZipFile, EOFError, OSError, zipfile.LargeZipFile, zlib.error, NotImplementedError)


def check_zip_file(path, kind: str = "napari-selfdenoise model file or bioimage.io package") -> Path:
    """A readable zip archive, or a ``ModelFileError`` saying why not (missing, truncated, not a zip)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as file:
            if file.read(4) == b"PK\x03\x04":  # a zip's start without its end: cut short
                raise ModelFileError(f"{path} is damaged or truncated (the zip archive is incomplete); "
                                     "save or copy it again")
        raise ModelFileError(f"{path} is not a {kind} (not a zip archive)")
    return path


def open_zip(source: "str | os.PathLike | IO[bytes]", path) -> zipfile.ZipFile:
    """Open a zip and refuse, before reading any entry, names that could escape a folder when the archive
    is unpacked (``../x``, ``/etc/x``, ``C:x``, backslashes), too many entries or too many bytes in all.
    ``path`` is the name used in messages."""
    archive = zipfile.ZipFile(source)
    try:
        infos = archive.infolist()
        if len(infos) > _MAX_ENTRIES:
            raise ModelFileError(f"{path}: the archive has {len(infos)} entries; refusing to read it")
        total = 0
        for info in infos:
            if unsafe_name(info.filename):
                raise ModelFileError(f"{path}: the archive holds an entry named {info.filename!r}, which "
                                     "points outside the archive's folder; refusing to read it")
            total += info.file_size
        if total > _MAX_TOTAL_BYTES:
            raise ModelFileError(f"{path}: the archive would unpack to {total / 1024**3:.0f} GiB; "
                                 "refusing to read it")
    except BaseException:
        archive.close()
        raise
    return archive


def unsafe_name(name: str) -> bool:
    """Whether a zip entry name could be written outside the folder it is unpacked into."""
    if not name or "\\" in name or "\x00" in name or name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        return True
    return any(part == ".." for part in name.split("/"))


def load_model(path, data: bytes | None = None) -> ModelContents:
    """Read a model file (or its ``data``, e.g. an attachment of a bioimage.io package; ``path`` then only
    names it); any problem becomes one ``ModelFileError`` that says what is wrong."""
    if data is None:
        path = check_zip_file(path)
        source = path
    else:
        source = io.BytesIO(data)
        if not zipfile.is_zipfile(source):
            raise ModelFileError(f"{path} is not a napari-selfdenoise model file (not a zip archive)")
    try:
        with open_zip(source, path) as archive:
            names = set(archive.namelist())
            if HEADER not in names or WEIGHTS not in names:
                raise ModelFileError(f"{path} is a zip file but not a napari-selfdenoise model "
                                     f"(it lacks {HEADER} or {WEIGHTS}) nor a bioimage.io package (no rdf.yaml)")
            header = _read_header(archive, path)
            weights = _read_tensors(archive, WEIGHTS, path)
            training = _read_tensors(archive, TRAINING, path) if TRAINING in names else {}
            sample = _read_tensors(archive, SAMPLE, path) if SAMPLE in names else {}
    except ZIP_ERRORS as err:
        raise ModelFileError(f"{path} is damaged or truncated ({err}); save or copy it again") from err
    return ModelContents(header, weights, training, sample)


def read_entry(archive: zipfile.ZipFile, name: str, path, limit: int = _MAX_ENTRY_BYTES) -> bytes:
    """One entry's bytes, refused when its declared size or compression ratio is implausible (a zip bomb).
    The size read is capped too, so a lying header cannot make it inflate more."""
    info = archive.getinfo(name)
    if info.file_size > limit or info.file_size > _MAX_RATIO * max(info.compress_size, 1) + 1024**2:
        raise ModelFileError(f"{path}: entry {name} is implausibly large; refusing to unpack it")
    with archive.open(info) as entry:
        data = entry.read(info.file_size + 1)
    if len(data) > info.file_size:
        raise ModelFileError(f"{path}: entry {name} is larger than the archive says; refusing to unpack it")
    return data


_read_entry = read_entry


def _read_header(archive, path) -> dict[str, Any]:
    try:
        header = json.loads(_read_entry(archive, HEADER, path).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFileError(f"{path}: the model header is not valid JSON ({err})") from err
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a napari-selfdenoise model file (unknown format)")
    version = header.get("format_version")
    if not isinstance(version, int):
        raise ModelFileError(f"{path}: the model header has no valid format_version")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} was saved by a newer napari-selfdenoise (model format {version}, this version "
            f"reads up to {FORMAT_VERSION}, package {__version__}); upgrade napari-selfdenoise to load it"
        )
    for key in ("config", "normalization", "architecture"):
        if key not in header:
            raise ModelFileError(f"{path}: the model header lacks {key!r}; the file is incomplete")
    return header


def _read_tensors(archive, name: str, path) -> dict[str, torch.Tensor]:
    data = _read_entry(archive, name, path)
    try:
        # safetensors is a JSON header plus raw bytes: parsing it cannot run code.
        return load_safetensors(data)
    except Exception as err:  # safetensors raises its own error types
        raise ModelFileError(f"{path}: {name} is not valid safetensors data ({type(err).__name__}); "
                             "the file is damaged or was not written by napari-selfdenoise") from err


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in a model header")


def flatten_optimizer_state(state: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split a torch optimizer state dict into tensors (for safetensors) and JSON-able rest."""
    tensors, scalars = {}, {"param_groups": state["param_groups"], "state": {}}
    for param_id, entries in state["state"].items():
        scalars["state"][str(param_id)] = {}
        for key, value in entries.items():
            if torch.is_tensor(value) and value.dim() > 0:
                tensors[f"{param_id}.{key}"] = value
            else:
                scalars["state"][str(param_id)][key] = float(value)
    return tensors, scalars


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for param_id, entries in scalars["state"].items():
        state[int(param_id)] = {k: torch.tensor(v) for k, v in entries.items()}
    for name, tensor in tensors.items():
        param_id, key = name.split(".", 1)
        state.setdefault(int(param_id), {})[key] = tensor
    return {"state": state, "param_groups": scalars["param_groups"]}
