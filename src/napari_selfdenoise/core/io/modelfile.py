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
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ..._version import __version__
from ..config import is_finite_number as _is_number
from ..errors import ModelFileError, SelfDenoiseError
from .atomic import atomic_write

FORMAT = "napari-selfdenoise-model"
FORMAT_VERSION = 1
HEADER, WEIGHTS, TRAINING = "selfdenoise.json", "weights.safetensors", "training.safetensors"
SAMPLE = "sample.safetensors"
# Refuse absurd entries (zip bombs): no model of ours is near this.
_MAX_ENTRY_BYTES = 2 * 1024**3
_MAX_TOTAL_BYTES = 8 * 1024**3
_MAX_ENTRIES = 10_000
_MAX_RATIO = 200
_MAX_HEADER_BYTES = 64 * 1024**2  # a JSON header: history of a very long run included


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
    """Write atomically (``atomic.atomic_write``): a temporary file in the same folder, renamed when complete."""
    path = Path(path)
    if not path.parent.exists():
        raise SelfDenoiseError(f"the folder {path.parent} does not exist; create it first")
    with atomic_write(path) as tmp:
        _write_zip(tmp, header, weights, training, sample)
    return path


# RuntimeError: zipfile's "File ... is encrypted, password required" (open_zip refuses encrypted entries first)
ZIP_ERRORS = (zipfile.BadZipFile, EOFError, OSError, zipfile.LargeZipFile, zlib.error, NotImplementedError,
              RuntimeError)


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


def open_zip(source: str | os.PathLike | IO[bytes], path) -> zipfile.ZipFile:
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
            if info.flag_bits & 0x1:
                raise ModelFileError(f"{path}: the archive's entry {info.filename!r} is encrypted; napari-selfdenoise "
                                     "reads unencrypted archives only (unpack it and zip it again without a password)")
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
        header = json.loads(_read_entry(archive, HEADER, path, limit=_MAX_HEADER_BYTES).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:  # JSONDecodeError; >4300-digit ints
        raise ModelFileError(f"{path}: the model header is not valid JSON ({_short(err)}); the file is "
                             "damaged or was not written by napari-selfdenoise") from err
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a napari-selfdenoise model file (unknown format)")
    version = header.get("format_version")
    if not _is_int(version) or version < 1:
        raise ModelFileError(f"{path}: the model header has no valid format_version")
    if version > FORMAT_VERSION:
        shown = version if version < 10**6 else "a larger number"
        raise ModelFileError(
            f"{path} was saved by a newer napari-selfdenoise (model format {shown}, this version "
            f"reads up to {FORMAT_VERSION}, package {__version__}); upgrade napari-selfdenoise to load it"
        )
    for key in ("config", "normalization", "architecture"):
        if key not in header:
            raise ModelFileError(f"{path}: the model header lacks {key!r}; the file is incomplete")
    check_header(header, path)
    return header


def _short(err: BaseException) -> str:
    text = str(err)
    return text.splitlines()[0][:200] if text else type(err).__name__


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Bounds on what a model file may ask for: far above any model of ours (the defaults: depth 2, 32 features,
# 0.5 M parameters), far below what would exhaust a workstation's memory when the network is built.
ARCHITECTURE_LIMITS = {"in_channels": (1, 64), "out_channels": (1, 128), "depth": (1, 6), "features": (1, 512),
                       "mixture": (1, 16), "noise_features": (1, 512)}
MAX_PARAMETERS = 200_000_000  # 800 MB of float32 weights


def check_architecture(architecture, where, error: type[SelfDenoiseError] = ModelFileError) -> dict[str, Any]:
    """Refuse an architecture whose sizes are not plain integers in range, or whose network would be
    absurdly large, before any of it is allocated (the parameters are counted on torch's "meta" device,
    which allocates nothing). Returns it as a dict."""
    from ..nn.networks import build_network

    if not isinstance(architecture, dict):
        raise error(f"{where}: the network description is not a mapping; the file is damaged")
    kind = architecture.get("kind", "unet")
    if kind not in ("unet", "nnet"):
        raise error(f"{where}: unknown network kind {str(kind)[:40]!r}; this model needs a newer "
                    "napari-selfdenoise")
    if architecture.get("dims") not in (2, 3) or isinstance(architecture.get("dims"), bool):
        raise error(f"{where}: the network's dims must be 2 or 3, not {str(architecture.get('dims'))[:40]}")
    for key, (low, high) in ARCHITECTURE_LIMITS.items():
        value = architecture.get(key)
        if value is None and key not in ("in_channels", "depth", "features"):
            continue
        if not _is_int(value) or not low <= value <= high:
            raise error(f"{where}: the network's {key} must be an integer from {low} to {high}, not "
                        f"{str(value)[:40]}; the file is damaged or was crafted")
    z_levels = architecture.get("z_levels")
    if z_levels is not None and (not _is_int(z_levels) or not 0 <= z_levels <= architecture["depth"]):
        raise error(f"{where}: the network's z_levels must be an integer from 0 to its depth")
    for key in ("n2v2", "structure"):
        if not isinstance(architecture.get(key, False), bool):
            raise error(f"{where}: the network's {key} must be true or false")
    try:
        with torch.device("meta"):
            count = sum(p.numel() for p in build_network(architecture).parameters())
    except SelfDenoiseError:
        raise
    except (TypeError, ValueError) as err:
        raise error(f"{where}: the network description is not understood ({_short(err)})") from err
    if count > MAX_PARAMETERS:
        raise error(f"{where}: the network would have {count / 1e6:.0f} million parameters (at most "
                    f"{MAX_PARAMETERS // 1_000_000} million are allowed); use a smaller depth or features")
    return dict(architecture)


def check_header(header: dict[str, Any], path) -> None:
    """The types and ranges of everything ``Denoiser.load`` reads from a header, each refused in one line."""
    if not isinstance(header["config"], dict):
        raise ModelFileError(f"{path}: the model header's config is not a mapping; the file is damaged")
    if not isinstance(header["config"].get("method_options", {}), dict):
        raise ModelFileError(f"{path}: the model header's method_options is not a mapping")
    architecture = check_architecture(header["architecture"], path)
    norm = header["normalization"]
    channels = architecture["in_channels"]
    if not (isinstance(norm, dict) and isinstance(norm.get("mode"), str)
            and all(isinstance(norm.get(k), list) and len(norm[k]) == channels for k in ("offset", "scale"))):
        raise ModelFileError(f"{path}: the model's normalisation is not a mode with one offset and scale per "
                             "channel; the file is damaged")
    if not all(_is_number(v) for v in norm["offset"] + norm["scale"]) or not all(v > 0 for v in norm["scale"]):
        raise ModelFileError(f"{path}: the model's normalisation has a scale that is zero, negative or not a "
                             "finite number (or an offset that is not finite); the model cannot be used")
    training = header.get("training")
    if training is None:
        return
    if not isinstance(training, dict):
        raise ModelFileError(f"{path}: the model header's training entry is not a mapping; the file is damaged")
    if not _is_int(training.get("step", 0)) or training.get("step", 0) < 0:
        raise ModelFileError(f"{path}: the model header's training step is not a non-negative integer")
    for key in ("elapsed", "best_val_loss"):
        value = training.get(key)
        if value is not None and not _is_number(value):
            raise ModelFileError(f"{path}: the model header's training {key} is not a number")
    for key in ("scheduler", "optimizer"):
        if training.get(key) is not None and not isinstance(training[key], dict):
            raise ModelFileError(f"{path}: the model header's training {key} is not a mapping")
    optimizer = training.get("optimizer")
    if optimizer is not None and not (
            isinstance(optimizer.get("param_groups"), list) and isinstance(optimizer.get("state"), dict)
            and all(isinstance(g, dict) and isinstance(g.get("params"), list) and all(_is_int(i) for i in g["params"])
                    and _is_number(g.get("lr")) for g in optimizer["param_groups"])
            and all(isinstance(k, str) and k.isdigit() and isinstance(v, dict)
                    and all(_is_number(x) for x in v.values()) for k, v in optimizer["state"].items())):
        raise ModelFileError(f"{path}: the model's optimizer state is damaged (bad parameter groups or "
                             "entries); the file was edited or crafted")
    history = header.get("history")
    if history is not None and not (isinstance(history, dict) and all(isinstance(v, list) for v in history.values())):
        raise ModelFileError(f"{path}: the model header's history is not a mapping of lists")


def check_finite_weights(weights: dict[str, torch.Tensor], path) -> None:
    """Refuse weights that hold NaN or infinity: such a network turns every image into NaN."""
    for key, tensor in weights.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelFileError(f"{path}: the weights {key} hold NaN or infinite values; the model is broken "
                                 "(training diverged, or the file was edited); train it again")


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
