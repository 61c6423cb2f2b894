"""Model exchange with the BioImage Model Zoo (bioimage.io): export a ``Denoiser`` as a model package
(spec 0.5) and load packages back, ours as full ``Denoiser`` objects, foreign ones for prediction.

An exported package is one zip::

    rdf.yaml                     the description (format_version 0.5.4; readers of newer 0.5.x upgrade it)
    weights.pt                   pytorch_state_dict of networks.ExportDenoiser / ExportNNet (torch.save)
    weights_torchscript.pt       the same network scripted (torch.jit.script), for tools without our code
    environment.yaml             the conda/pip environment the pytorch_state_dict weights need
    test_input.npy               a crop of the user's training data (raw units, float32)
    test_output_<id>.npy         what the package computes from it (denoised; N-net also noise_std)
    cover.png                    the crop, noisy | denoised, 2:1
    README.md                    method, paper, training summary, how to use it, limitations
    selfdenoise.sdmodel          the native model file (weights, normalisation, config, history,
                                 optimizer state): what napari-selfdenoise loads back

The network sees normalised intensities; the normalisation fitted on the training data is written as
the inputs' ``preprocessing`` (``scale_linear``, per channel) and undone by each output's
``postprocessing``, so any bioimage.io consumer gets results in the input's units. The native model header
is also in ``config["napari-selfdenoise"]``.

Loading never unpickles and never imports code named by the package. Every weights file and attachment
is checked against its sha256 in rdf.yaml first (a package that claims to be ours must give one for each).
Ours are read from the attached native file (JSON + safetensors). Foreign ones: the ``pytorch_state_dict``
of one of this package's architectures (``napari_selfdenoise.core.networks.Export*``) is data, read by
``safetorch.read_state_dict``, and preferred; ``torchscript`` weights are code (see ``core.sandbox``): they
are refused unless the user trusts the package (``trust_code=True``), and then checked
(``safetorch.check_torchscript``) and run only in a child process, never here.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import os
import re
import string
import struct
import zipfile
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .. import __version__
from .atomic import atomic_write
from .errors import ModelFileError, SelfDenoiseError, UntrustedCodeError
from .outputs import plan_output

FORMAT_VERSION = "0.5.4"
RDF = "rdf.yaml"
NATIVE = "selfdenoise.sdmodel"
CONFIG_KEY = "napari-selfdenoise"
INPUT_ID = "raw"
DEFAULT_LICENSE = "CC-BY-4.0"
NAME_CHARACTERS = set(string.ascii_letters + string.digits + "_+- ()")
_MAX_RDF_BYTES = 4 * 1024**2

# The method papers, as the rdf's ``cite`` entries (DOIs; arXiv DOIs where the paper is there).
CITATIONS = {
    "n2s": ("Batson J. & Royer L. Noise2Self: Blind Denoising by Self-Supervision. ICML 2019.",
            "10.48550/arXiv.1901.11365"),
    "n2v": ("Krull A., Buchholz T.-O. & Jug F. Noise2Void - Learning Denoising from Single Noisy Images. "
            "CVPR 2019.", "10.1109/CVPR.2019.00223"),
    "n2v2": ("Höck E., Buchholz T.-O., Brachmann A., Jug F. & Freytag A. N2V2 - Fixing Noise2Void "
             "Checkerboard Artifacts with Modified Sampling Strategies and a Tweaked Network "
             "Architecture. ECCV Workshops 2022.", "10.48550/arXiv.2211.08512"),
    "n2same": ("Xie Y., Wang Z. & Ji S. Noise2Same: Optimizing A Self-Supervised Bound for Image "
               "Denoising. NeurIPS 2020.", "10.48550/arXiv.2010.11971"),
    "nnet": ("Ollion J., Ollion C., Gassiat E., Lehéricy L. & Le Corff S. Joint self-supervised blind "
             "denoising and noise estimation. arXiv:2102.08023, 2021.", "10.48550/arXiv.2102.08023"),
}
OUTPUT_DESCRIPTIONS = {
    "denoised": "the denoised image, in the input's units",
    "noise_std": "the predicted standard deviation of the noise at each pixel, in the input's units",
}


# ================================================================================================ export


def default_metadata(denoiser) -> dict[str, Any]:
    """The name, description, authors, licence and tags an export uses unless told otherwise."""
    dims = denoiser.architecture["dims"]
    title = denoiser.method.title.split(" (")[0]
    return {
        "name": clean_name(f"{title} denoiser {dims}D ({denoiser.config.axes})"),
        "description": (f"Self-supervised {title} denoiser for {dims}D {denoiser.config.axes} microscopy "
                        f"images, trained on the user's own noisy data with napari-selfdenoise "
                        f"{__version__} (no clean images needed)."),
        "authors": [_user_name()],
        "license": DEFAULT_LICENSE,
        "tags": default_tags(denoiser),
    }


def default_tags(denoiser) -> list[str]:
    tags = ["denoising", "self-supervised", f"{denoiser.architecture['dims']}d", "pytorch",
            "fluorescence-light-microscopy", "napari-selfdenoise", denoiser.config.method]
    if denoiser.config.method in ("n2v", "n2v2"):
        tags.append("noise2void")
    return tags


def clean_name(name: str) -> str:
    """A name made valid for bioimage.io: only letters, digits, spaces and _ + - ( )."""
    return "".join(c if c in NAME_CHARACTERS else " " for c in name).strip()[:128]


def check_metadata(name: str, description: str, authors, license: str, tags) -> None:
    """Refuse metadata bioimage.io would refuse, with a message saying what to change."""
    if not isinstance(name, str) or not 5 <= len(name.strip()) <= 128:
        raise SelfDenoiseError("the model name must be 5 to 128 characters long")
    bad = sorted(set(name) - NAME_CHARACTERS)
    if bad:
        raise SelfDenoiseError(f"the model name may only hold letters, digits, spaces and _ + - ( ); "
                               f"it holds {''.join(bad)!r}")
    if len(description) > 1024:
        raise SelfDenoiseError("the description must be at most 1024 characters long")
    if not authors:
        raise SelfDenoiseError("give at least one author")
    for author in authors:
        author_name = author["name"] if isinstance(author, dict) else author
        if not str(author_name).strip() or "/" in str(author_name):
            raise SelfDenoiseError(f"invalid author {author_name!r} (a name, without '/')")
    if not re.fullmatch(r"[A-Za-z0-9.+\-]+", license or ""):
        raise SelfDenoiseError(f"the licence must be an SPDX identifier such as CC-BY-4.0, MIT or BSD-3-Clause "
                               f"(got {license!r})")
    for tag in tags:
        if not str(tag).strip():
            raise SelfDenoiseError("tags must not be empty")


def parse_author(text) -> dict[str, str]:
    """``"Ada Lovelace"``, ``"Ada Lovelace <ada@example.org>"`` or ``"Ada Lovelace (Analytical Engines)"``
    (or both) -> an rdf author entry."""
    if isinstance(text, dict):
        return {k: str(v) for k, v in text.items() if v}
    text = str(text).strip()
    author: dict[str, str] = {}
    email = re.search(r"<([^<>]+)>", text)
    if email:
        author["email"] = email.group(1).strip()
        text = (text[: email.start()] + text[email.end():]).strip()
    affiliation = re.search(r"\(([^()]*)\)\s*$", text)
    if affiliation:
        author["affiliation"] = affiliation.group(1).strip()
        text = text[: affiliation.start()].strip()
    author["name"] = text
    return {"name": author.pop("name"), **author}


def export_bmz(denoiser, path, *, name: str | None = None, description: str | None = None,
               authors: Sequence | None = None, license: str | None = None, tags: Sequence[str] | None = None,
               image=None, axes: str | None = None, check: Callable[[Path], None] | None = None) -> Path:
    """Write ``denoiser`` as a bioimage.io model package (a zip) at ``path``; returns the path.

    ``image`` (with ``axes``, default the model's) gives the test tensors and cover; by default the crop
    of the training data kept in the model is used. Written to a temporary file and renamed when
    complete: a failure leaves nothing behind (and an older file at ``path`` as it was). ``check`` is
    called with the finished package under its temporary name (the CLI's ``--validate``): if it raises,
    nothing is written.
    """
    from .denoiser import sample_crop

    if denoiser.network is None or getattr(denoiser, "architecture", None) is None:
        raise SelfDenoiseError("nothing to export: the model is not trained yet")
    if not getattr(denoiser, "trainable", True):
        raise SelfDenoiseError("this model came from a foreign bioimage.io package; it is already one")
    path = Path(path)
    _check_target(path)
    defaults = default_metadata(denoiser)
    name = defaults["name"] if name is None else str(name).strip()
    description = defaults["description"] if description is None else str(description).strip()
    license = defaults["license"] if license is None else str(license).strip()
    authors = [parse_author(a) for a in (defaults["authors"] if authors is None else authors) if str(a).strip()]
    tags = list(dict.fromkeys(str(t).strip() for t in (defaults["tags"] if tags is None else tags) if str(t).strip()))
    check_metadata(name, description, authors, license, tags)

    depth = denoiser.architecture["depth"]
    if image is not None:
        from .data import check_image

        layout = check_image(image, axes or denoiser.config.axes, "the test image")
        denoiser._check_compatible(layout)
        sample = sample_crop(layout.to_canonical(image), depth)
        if sample is None:
            raise SelfDenoiseError(f"the test image is smaller than {2**depth} pixels along an axis; "
                                   "give a larger one")
    else:
        sample = denoiser.sample
        if sample is None:
            raise SelfDenoiseError("this model file holds no crop of its training data (it was saved by an "
                                   "older version); give an image for the test tensors (--input IMAGE)")
    sample = np.ascontiguousarray(sample, dtype=np.float32)
    files = _package_files(denoiser, sample, name, description, authors, license, tags)
    _write_package(path, files, check)
    return path


def _check_target(path: Path) -> None:
    plan_output(path, overwrite=True, kind="bioimage.io package", suffixes=(".zip",))


def _package_files(denoiser, sample, name, description, authors, license, tags) -> dict[str, bytes]:
    from .networks import build_export_network, receptive_radius

    arch = dict(denoiser.architecture)
    method, normalization = denoiser.method, denoiser.normalization
    dims, depth, channels = arch["dims"], arch["depth"], arch["in_channels"]
    outputs = list(method.outputs)

    network = build_export_network(arch)
    network.net.load_state_dict({k: v.detach().cpu() for k, v in denoiser.network.state_dict().items()})
    network.eval()
    scripted = torch.jit.script(network)
    with torch.no_grad():
        x = torch.from_numpy(normalization.apply(sample))
        eager = network(x)
        script = scripted(x)
    eager = [eager] if isinstance(eager, torch.Tensor) else list(eager)
    script = [script] if isinstance(script, torch.Tensor) else list(script)
    for a, b in zip(eager, script):
        if not torch.allclose(a, b, rtol=1e-4, atol=1e-5):
            raise SelfDenoiseError("the TorchScript version of the network does not reproduce it; please "
                                   "report this as a bug")
    results = {out: np.ascontiguousarray(method.denormalize_output(out, t.numpy(), normalization), np.float32)
               for out, t in zip(outputs, eager)}

    files: dict[str, bytes] = {}
    buffer = io.BytesIO()
    torch.save(network.state_dict(), buffer)
    files["weights.pt"] = buffer.getvalue()
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    files["weights_torchscript.pt"] = buffer.getvalue()
    files["test_input.npy"] = _npy(sample)
    for out in outputs:
        files[f"test_output_{out}.npy"] = _npy(results[out])
    files["cover.png"] = cover_png(sample, results["denoised"])
    files[NATIVE] = denoiser.to_bytes()
    torch_version = torch.__version__.split("+")[0]
    files["environment.yaml"] = _yaml({
        "name": "napari-selfdenoise", "channels": ["conda-forge", "nodefaults"],
        "dependencies": ["python>=3.11", "pip", {"pip": [f"napari-selfdenoise=={__version__}",
                                                           f"torch=={torch_version}"]}],
    })
    header = _native_header(denoiser)
    files["README.md"] = readme(denoiser, name, description, sample.shape).encode("utf-8")

    space = "zyx"[3 - dims:]
    step = 2**depth
    radius = -(-receptive_radius(depth) // step) * step
    halos = {}
    for axis, size in zip(space, sample.shape[2:]):
        halos[axis] = max(0, min(radius, (size - 1) // 2))
    channel_names = [f"channel{i}" for i in range(channels)] if channels > 1 else ["channel0"]

    def input_axes():
        axes_ = [{"type": "batch"}, {"type": "channel", "channel_names": channel_names}]
        for axis in space:
            minimum = max(step, -(-(2 * halos[axis] + 1) // step) * step)
            axes_.append({"type": "space", "id": axis, "size": {"min": minimum, "step": step}})
        return axes_

    def output_axes(out):
        axes_ = [{"type": "batch"}, {"type": "channel",
                                     "channel_names": [f"{out}{i}" for i in range(channels)]}]
        for axis in space:
            entry = {"type": "space", "id": axis, "size": {"tensor_id": INPUT_ID, "axis_id": axis}}
            if halos[axis] >= 1:
                entry["halo"] = int(halos[axis])
            axes_.append(entry)
        return axes_

    offset, scale = np.asarray(normalization.offset, float), np.asarray(normalization.scale, float)
    pre = [{"id": "ensure_dtype", "kwargs": {"dtype": "float32"}},
           *_linear(1.0 / scale, -offset / scale)]
    rdf: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "type": "model",
        "name": name,
        "description": description,
        "authors": authors,
        "cite": [{"text": CITATIONS.get(denoiser.config.method, (method.paper, None))[0],
                  **({"doi": CITATIONS[denoiser.config.method][1]} if denoiser.config.method in CITATIONS else {})}],
        "license": license,
        "tags": tags,
        "version": "1",
        "covers": ["cover.png"],
        "documentation": "README.md",
        "timestamp": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        "inputs": [{
            "id": INPUT_ID,
            "description": f"noisy {dims}D image, any size (each of {', '.join(space.upper())} a multiple "
                           f"of {step}), in the units the model was trained on",
            "axes": input_axes(),
            "test_tensor": {"source": "test_input.npy", "sha256": _sha256(files["test_input.npy"])},
            "data": {"type": "float32"},
            "preprocessing": pre,
        }],
        "outputs": [{
            "id": out,
            "description": OUTPUT_DESCRIPTIONS.get(out, out),
            "axes": output_axes(out),
            "test_tensor": {"source": f"test_output_{out}.npy",
                            "sha256": _sha256(files[f"test_output_{out}.npy"])},
            "data": {"type": "float32"},
            "postprocessing": [*(_linear(scale, offset) if out != "noise_std" else _linear(scale, 0 * scale)),
                               {"id": "ensure_dtype", "kwargs": {"dtype": "float32"}}],
        } for out in outputs],
        "weights": {
            "pytorch_state_dict": {
                "source": "weights.pt", "sha256": _sha256(files["weights.pt"]),
                "architecture": {"callable": type(network).__name__,
                                 "import_from": "napari_selfdenoise.core.networks",
                                 "kwargs": {k: v for k, v in arch.items()}},
                "pytorch_version": torch_version,
                "dependencies": {"source": "environment.yaml", "sha256": _sha256(files["environment.yaml"])},
            },
            "torchscript": {
                "source": "weights_torchscript.pt", "sha256": _sha256(files["weights_torchscript.pt"]),
                "pytorch_version": torch_version, "parent": "pytorch_state_dict",
            },
        },
        "attachments": [{"source": NATIVE, "sha256": _sha256(files[NATIVE])}],
        "config": {CONFIG_KEY: header},
    }
    # Float noise between machines: 0.1 % relative, and 0.01 % of the largest output value absolute (the
    # spec caps the absolute tolerance at 1 % of the test output's maximum).
    peak = min(float(np.max(results[out])) for out in outputs)
    if peak > 0:
        rdf["config"]["bioimageio"] = {"reproducibility_tolerance": [
            {"relative_tolerance": 1e-3, "absolute_tolerance": 1e-4 * peak, "mismatched_elements_per_million": 100}]}
    files[RDF] = _yaml(rdf)
    return files


def _linear(gain, offset) -> list[dict]:
    """A ``scale_linear`` step (per channel when there are several), or none when it would be identity."""
    gain, offset = [float(g) for g in np.atleast_1d(gain)], [float(o) for o in np.atleast_1d(offset)]
    if all(g == 1.0 for g in gain) and all(o == 0.0 for o in offset):
        return []
    if len(gain) == 1:
        return [{"id": "scale_linear", "kwargs": {"gain": gain[0], "offset": offset[0]}}]
    return [{"id": "scale_linear", "kwargs": {"axis": "channel", "gain": gain, "offset": offset}}]


def _native_header(denoiser) -> dict:
    import json

    header, *_ = denoiser._file_parts(include_training_state=False)
    header = {"format": "napari-selfdenoise-model", "package_version": __version__, **header}
    return json.loads(json.dumps(header, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def readme(denoiser, name: str, description: str, sample_shape) -> str:
    config, state, arch = denoiser.config, denoiser.state, denoiser.architecture
    text, doi = CITATIONS.get(config.method, (denoiser.method.paper, None))
    outputs = "\n".join(f"- `{o}`: {OUTPUT_DESCRIPTIONS.get(o, o)}" for o in denoiser.method.outputs)
    loss = "n/a" if state.best_val_loss is None else f"{state.best_val_loss:.4g}"
    return f"""# {name}

{description}

## Method

{denoiser.method.title}, trained self-supervised: the network learns to denoise from the noisy images
alone, with no clean targets. Please cite the method's paper when you use this model:

> {text}{f" https://doi.org/{doi}" if doi else ""}

and napari-selfdenoise, which trained and exported it.

## Training

- axes of the training data: `{config.axes}` ({arch['dims']}D, {arch['in_channels']} channel(s))
- network: {arch['dims']}D U-Net{' (N2V2 variant)' if arch.get('n2v2') else ''}, depth {arch['depth']},
  {arch['features']} features{f", N-net noise head (mixture of {arch.get('mixture')})" if arch.get('kind') == 'nnet' else ''}
- {state.step} steps, patch {config.patch}, batch {config.batch}, learning rate {config.lr:g}, seed {config.seed};
  best validation loss {loss}
- normalisation: {denoiser.normalization.mode}, fitted on the training data and applied as this package's
  pre- and post-processing (outputs are in the input's units)

## Outputs

{outputs}

## Use

- napari: Plugins > Self-supervised Denoising > Apply model, then pick this .zip file
- command line: `selfdenoise predict THIS.zip image.tif --out denoised.ome.tif`
- continue training on new data: `selfdenoise train new.tif --from THIS.zip --out tuned.sdmodel`
- any bioimage.io consumer (bioimageio.core, deepImageJ, ...) through the TorchScript weights

The test tensors are a {'x'.join(map(str, sample_shape[2:]))} crop of the training data.

## Validation

The package's test input is a crop of the training data and its test outputs are what this network
computes from it; `bioimageio.core` reproduces them from both weights formats. A self-supervised model
has no clean ground truth: judge the result by eye (the cover shows the crop before and after) and, when
you have them, against a few clean acquisitions (e.g. long exposures).

## Limitations

A self-supervised denoiser learns the noise of the data it was trained on. It works best on images from
the same microscope and settings (detector, gain, exposure); on other data, train or fine-tune again.
Pixel-wise independent noise is assumed; structured (correlated) noise is partly kept. The package runs
the plain network: test-time augmentation{' and strict J-invariant inference' if config.method == 'n2s' else ''}
are options of napari-selfdenoise, not part of the package.
"""


def cover_png(noisy: np.ndarray, denoised: np.ndarray) -> bytes:
    """A 2:1 grey-scale PNG: the noisy crop | the denoised crop (middle Z plane, first channel)."""
    def plane(a):
        a = np.asarray(a, np.float32)[0, 0]
        while a.ndim > 2:
            a = a[a.shape[0] // 2]
        return a

    left, right = plane(noisy), plane(denoised)
    low, high = np.percentile(left, (0.5, 99.5))
    if not high > low:
        high = low + 1.0
    height = 256
    rows = np.linspace(0, left.shape[0] - 1, height).round().astype(int)
    cols = np.linspace(0, left.shape[1] - 1, height).round().astype(int)
    tiles = [np.clip((p[np.ix_(rows, cols)] - low) / (high - low), 0, 1) for p in (left, right)]
    image = (np.concatenate(tiles, axis=1) * 255).round().astype(np.uint8)
    return png_bytes(image)


def png_bytes(gray: np.ndarray) -> bytes:
    """Encode an 8-bit grey-scale image as PNG (no imaging library needed)."""
    height, width = gray.shape
    raw = b"".join(b"\x00" + gray[row].tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _yaml(data) -> bytes:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100).encode("utf-8")


def _write_package(path: Path, files: dict[str, bytes], check: Callable[[Path], None] | None = None) -> None:
    with atomic_write(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(RDF, files[RDF])
            for entry, data in files.items():
                if entry != RDF:
                    archive.writestr(entry, data)
        if check is not None:
            check(tmp)


# ================================================================================================ import


def rdf_entry(names) -> str | None:
    """The package's description entry: ``rdf.yaml``, ``bioimageio.yaml`` or ``*.bioimageio.yaml`` at its root."""
    for candidate in (RDF, "bioimageio.yaml"):
        if candidate in names:
            return candidate
    roots = sorted(n for n in names if "/" not in n and n.endswith(".bioimageio.yaml"))
    return roots[0] if roots else None


def is_bmz_package(path) -> bool:
    """Whether ``path`` is a zip holding a bioimage.io description (no error for anything else)."""
    try:
        path = Path(path)
        if not path.is_file() or not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        return rdf_entry(names) is not None and "selfdenoise.json" not in names
    except (OSError, zipfile.BadZipFile, ValueError):
        return False


# A model description has a few hundred YAML nodes; aliases may repeat some, but a "billion laughs" file
# (aliases of aliases) must not expand into millions of them.
MAX_YAML_NODES = 100_000


def load_yaml(text: str, where: str):
    """``yaml.safe_load`` (plain data only) with the document's size after alias expansion bounded:
    the node graph is measured, counting every alias as the copy it stands for, before any of it is
    built; a recursive alias or more than ``MAX_YAML_NODES`` nodes is one ``ModelFileError``."""
    import yaml

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_yaml_expansion(node, where)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_yaml_expansion(root, where: str) -> None:
    """Count the nodes of the expanded document (depth-first, sizes of shared nodes memoised)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # the current node's ancestors: reaching one again is a cycle
    stack = [(root, False)]
    while stack:
        node, finished = stack.pop()
        children = _yaml_children(node)
        if finished:
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children)
            open_nodes.discard(id(node))
            if sizes[id(node)] > MAX_YAML_NODES:
                raise ModelFileError(f"{where} expands to more than {MAX_YAML_NODES} values through YAML "
                                     "aliases (a \"billion laughs\" file); refusing it")
            continue
        if id(node) in sizes:
            continue
        if id(node) in open_nodes:
            raise ModelFileError(f"{where} holds a recursive YAML alias; refusing it")
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)


def _yaml_children(node) -> list:
    import yaml

    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return []


class _Package:
    """The zip, opened with the checks of ``modelfile.open_zip``, and its parsed description."""

    def __init__(self, path):
        from .modelfile import ZIP_ERRORS, check_zip_file, open_zip, read_entry

        self.path = check_zip_file(path, "bioimage.io package")
        self._read_entry = read_entry
        self.archive = None
        try:
            self._open(open_zip, read_entry, ZIP_ERRORS)
        except BaseException:
            if self.archive is not None:
                self.archive.close()
            raise

    def _open(self, open_zip, read_entry, ZIP_ERRORS) -> None:
        try:
            self.archive = open_zip(self.path, self.path)
            self.names = set(self.archive.namelist())
            entry = rdf_entry(self.names)
            if entry is None:
                raise ModelFileError(f"{self.path} is a zip file but not a bioimage.io package (no rdf.yaml)")
            text = read_entry(self.archive, entry, self.path, limit=_MAX_RDF_BYTES)
        except ZIP_ERRORS as err:
            raise ModelFileError(f"{self.path} is damaged or truncated ({err}); download or copy it again") from err
        try:
            import yaml

            self.rdf = load_yaml(text.decode("utf-8"), f"{self.path}: {entry}")
        except ModelFileError:
            raise
        except Exception as err:  # yaml's errors, RecursionError on deep nesting, bad UTF-8
            raise ModelFileError(f"{self.path}: {entry} is not valid YAML "
                                 f"({(str(err).splitlines() or [type(err).__name__])[0][:200]})") from err
        if not isinstance(self.rdf, dict):
            raise ModelFileError(f"{self.path}: {entry} does not describe a model")
        if self.rdf.get("type") != "model":
            raise ModelFileError(f"{self.path} describes a bioimage.io {self.rdf.get('type', 'resource')!r}, "
                                 "not a model")
        version = str(self.rdf.get("format_version", ""))
        if not re.fullmatch(r"0\.[45]\.\d+", version):
            raise ModelFileError(f"{self.path}: unsupported bioimage.io format_version {version or '(none)'!r}; "
                                 "napari-selfdenoise reads model descriptions 0.4.x and 0.5.x")
        self.format = tuple(int(p) for p in version.split("."))

    def read(self, source, what: str, sha256: str | None = None) -> bytes:
        from .modelfile import ZIP_ERRORS, unsafe_name

        if not isinstance(source, str) or not source:
            raise ModelFileError(f"{self.path}: the {what} has no file name in rdf.yaml")
        if re.match(r"^[a-z][a-z0-9+.-]*://", source):
            raise ModelFileError(f"{self.path}: the {what} is a link ({source}), not a file in the package; "
                                 "download the full package (with its files) from bioimage.io")
        name = source[2:] if source.startswith("./") else source
        if unsafe_name(name):
            raise ModelFileError(f"{self.path}: the {what} {source!r} points outside the package; refusing it")
        if name not in self.names:
            raise ModelFileError(f"{self.path}: the {what} {source!r} is missing from the package")
        try:
            data = self._read_entry(self.archive, name, self.path)
        except ZIP_ERRORS as err:
            raise ModelFileError(f"{self.path} is damaged or truncated ({err}); download or copy it again") from err
        if sha256 and hashlib.sha256(data).hexdigest() != str(sha256).lower():
            raise ModelFileError(f"{self.path}: {source} does not match its sha256 in rdf.yaml (damaged or edited)")
        return data

    def close(self):
        self.archive.close()


def load_bmz(path, trust_code: bool = False, *, describe_untrusted: bool = False):
    """A ``Denoiser`` for packages exported by napari-selfdenoise, a ``ForeignModel`` for others.

    A foreign package whose only runnable weights are TorchScript (code written by its author) raises
    ``UntrustedCodeError`` unless ``trust_code``; with ``describe_untrusted`` it is returned instead,
    described but without weights (``selfdenoise info``)."""
    from .denoiser import Denoiser
    from .modelfile import load_model

    package = _Package(path)
    try:
        rdf = package.rdf
        config = rdf.get("config") if isinstance(rdf.get("config"), dict) else {}
        attachments = rdf.get("attachments") or []
        if isinstance(attachments, dict):  # 0.4 style: {files: [...]}
            attachments = attachments.get("files") or []
        if not isinstance(attachments, list):
            raise ModelFileError(f"{package.path}: the attachments in rdf.yaml are not a list of files")
        native = [a for a in attachments
                  if isinstance(a.get("source") if isinstance(a, dict) else a, str)
                  and (a.get("source") if isinstance(a, dict) else a) in (NATIVE, f"./{NATIVE}")]
        ours = CONFIG_KEY in config and bool(native)
        _verify_files(package, rdf, attachments, ours)
        if ours:
            entry = native[0] if isinstance(native[0], dict) else {"source": native[0]}
            data = package.read(entry["source"], "native model attachment", entry.get("sha256"))
            model = Denoiser._from_contents(load_model(f"{package.path} ({NATIVE})", data=data), package.path)
            model.bmz_metadata = {k: rdf.get(k) for k in ("name", "description", "authors", "license", "tags")}
            return model
        return ForeignModel(package, trust_code, describe_untrusted=describe_untrusted)
    finally:
        package.close()


def _verify_files(package: _Package, rdf: dict, attachments: list, ours: bool) -> None:
    """Check every weights file and attachment in the package against its sha256 in rdf.yaml, whether or
    not it is loaded (an edited ``weights.pt`` must not pass because the native file is used). Our exports
    always write a sha256, so a package that claims to be ours and lacks one is refused; a foreign one may
    lack it (the spec makes it optional)."""
    weights = rdf.get("weights") if isinstance(rdf.get("weights"), dict) else {}
    entries = [(f"{kind} weights", entry) for kind, entry in weights.items() if isinstance(entry, dict)]
    entries += [("attachment", entry if isinstance(entry, dict) else {"source": entry}) for entry in attachments]
    for what, entry in entries:
        source = entry.get("source")
        if not isinstance(source, str) or re.match(r"^[a-z][a-z0-9+.-]*://", source):
            continue  # links and malformed entries: refused when (and if) they are loaded
        sha256 = entry.get("sha256")
        in_package = (source[2:] if source.startswith("./") else source) in package.names
        if ours and not sha256:
            raise ModelFileError(f"{package.path}: rdf.yaml gives no sha256 for {source}, which every package "
                                 "exported by napari-selfdenoise has; it was edited: refusing it")
        if sha256 and (ours or in_package):
            package.read(source, what, sha256)


# Axis types of a 0.5 description and letters of a 0.4 one -> ours (batch handled apart).
_AXIS_LETTERS = {"b": "B", "c": "C", "z": "Z", "y": "Y", "x": "X", "t": "T", "i": "I"}


class _Axis(SimpleNamespace):
    """One tensor axis: ``letter`` (B, C, Z, Y, X; T or I for the unsupported time and index axes),
    ``id`` (as in the description), ``size`` (int, or (min, step), or (tensor, axis) reference)."""


def _parse_axes(tensor: dict, version: tuple, shape_key: str = "shape") -> list[_Axis]:
    axes = tensor.get("axes")
    if version[:2] == (0, 4):
        if not isinstance(axes, str):
            raise ValueError("axes must be a string such as 'bcyx'")
        shape = tensor.get(shape_key)
        result = []
        for index, letter in enumerate(axes.lower()):
            if letter not in _AXIS_LETTERS:
                raise ValueError(f"unknown axis {letter!r}")
            if isinstance(shape, list):
                size = int(shape[index])
            elif isinstance(shape, dict) and "min" in shape:
                size = (int(shape["min"][index]), int(shape["step"][index]))
                if size[1] == 0:
                    size = size[0]
                elif letter == "c":
                    size = None  # any number of channels
            elif isinstance(shape, dict) and "reference_tensor" in shape:
                scale = float(shape.get("scale", [1] * len(axes))[index])
                offset = float(shape.get("offset", [0] * len(axes))[index])
                size = ("ref", shape["reference_tensor"], letter, scale, offset)
            else:
                raise ValueError("shape is missing or not understood")
            halo = tensor.get("halo")
            result.append(_Axis(letter=_AXIS_LETTERS[letter], id=letter, size=size,
                                halo=int(halo[index]) if isinstance(halo, list) else 0, channels=None))
        return _checked_sizes(result)
    if not isinstance(axes, list) or not axes:
        raise ValueError("axes must be a list of axis descriptions")
    result = []
    for axis in axes:
        if not isinstance(axis, dict) or "type" not in axis:
            raise ValueError("each axis needs a type")
        kind = axis["type"]
        if kind == "batch":
            result.append(_Axis(letter="B", id="batch", size=None, halo=0, channels=None))
            continue
        if kind == "channel":
            names = axis.get("channel_names") or []
            result.append(_Axis(letter="C", id="channel", size=len(names), halo=0, channels=len(names)))
            continue
        axis_id = str(axis.get("id") or {"time": "t", "index": "i"}.get(kind, kind))
        letter = {"space": axis_id.upper(), "time": "T", "index": "I"}.get(kind, "?")
        if letter not in "ZYXTI":
            raise ValueError(f"axis {axis_id!r} of type {kind!r} is not understood")
        size = axis.get("size")
        if isinstance(size, int):
            parsed = size
        elif isinstance(size, dict) and "min" in size:
            parsed = (int(size["min"]), int(size.get("step", 0)))
        elif isinstance(size, dict) and "tensor_id" in size:
            parsed = ("ref", size["tensor_id"], size.get("axis_id", axis_id), 1.0, float(size.get("offset", 0)))
        else:
            raise ValueError(f"the size of axis {axis_id!r} is missing or not understood")
        result.append(_Axis(letter=letter, id=axis_id, size=parsed, halo=int(axis.get("halo", 0) or 0),
                            channels=None))
    return _checked_sizes(result)


# The largest edge a description may give a spatial axis (a fixed size or a minimum): tiles are built from
# these, so they must not ask for gigabytes (see also ForeignModel.MAX_TILE_PIXELS).
MAX_AXIS_SIZE = 2**16


def _checked_sizes(axes: list[_Axis]) -> list[_Axis]:
    """Refuse spatial sizes that are not whole numbers in range (``min: 0, step: 0``, a negative step, a
    size of a billion) and negative halos; raises ``ValueError``, which the caller words for the user."""
    for axis in axes:
        if isinstance(axis.size, bool) or (isinstance(axis.size, tuple) and any(isinstance(v, bool) for v in axis.size)):
            raise ValueError(f"the size of axis {axis.id!r} is true/false, not a number of pixels")
        if not 0 <= axis.halo <= MAX_AXIS_SIZE:
            raise ValueError(f"the halo of axis {axis.id!r} must be from 0 to {MAX_AXIS_SIZE}, not {axis.halo}")
        if axis.letter not in "ZYX":
            continue
        size = axis.size
        if isinstance(size, int):
            fixed = [size]
        elif isinstance(size, tuple) and size[0] == "ref":
            if not (np.isfinite(size[3]) and size[3] > 0 and np.isfinite(size[4]) and abs(size[4]) <= MAX_AXIS_SIZE):
                raise ValueError(f"the size of axis {axis.id!r} refers to another tensor with a bad scale or offset")
            continue
        else:
            fixed = [size[0]]
            if not 0 <= size[1] <= MAX_AXIS_SIZE:
                raise ValueError(f"the size step of axis {axis.id!r} must be from 0 to {MAX_AXIS_SIZE}, not {size[1]}")
        if not all(1 <= value <= MAX_AXIS_SIZE for value in fixed):
            raise ValueError(f"the size of axis {axis.id!r} must be from 1 to {MAX_AXIS_SIZE} pixels, not {fixed[0]}")
    return axes


class ForeignModel:
    """A bioimage.io model made elsewhere, for prediction only: one input, one output, TorchScript weights
    (or the ``pytorch_state_dict`` of one of this package's own architectures).

    The image is mapped onto the model's axes (S and T are looped over; C, Z, Y and X go in), the
    description's pre-processing is applied to the whole image, the network runs on tiles whose sizes
    follow the model's shape constraints (overlapping by the output halo, smoothly blended), and the
    post-processing is applied to the result.
    """

    trainable = False
    trained = True

    def __init__(self, package: _Package, trust_code: bool = False, *, describe_untrusted: bool = False):
        self.path = package.path
        rdf = package.rdf
        where = f"{package.path}: rdf.yaml"
        inputs, outputs = rdf.get("inputs"), rdf.get("outputs")
        if not isinstance(inputs, list) or not inputs or not isinstance(outputs, list) or not outputs:
            raise ModelFileError(f"{where} lacks its inputs or outputs; the description is incomplete")
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelFileError(f"{package.path} has {len(inputs)} input(s) and {len(outputs)} output(s); "
                                 "napari-selfdenoise runs foreign models with one input and one output")
        self.input, self.output = inputs[0], outputs[0]
        if not isinstance(self.input, dict) or not isinstance(self.output, dict):
            raise ModelFileError(f"{where}: inputs and outputs must be descriptions")
        version = package.format
        try:
            self.in_axes = _parse_axes(self.input, version)
            self.out_axes = _parse_axes(self.output, version)
        except (ValueError, TypeError, KeyError, IndexError) as err:
            raise ModelFileError(f"{where}: the tensor axes are not understood ({err})") from err
        self._check_axes_supported(where)
        self.name = str(rdf.get("name") or Path(package.path).stem)
        self.description = str(rdf.get("description") or "")
        self.version = version
        self.preprocessing = self._steps(self.input.get("preprocessing"), where, "pre")
        self.postprocessing = self._steps(self.output.get("postprocessing"), where, "post")
        self.authors = _author_names(rdf.get("authors"))
        self._child_weights: tuple[bytes, str, str] | None = None  # (bytes, name, kind) for the child process
        self.weights_note = ""
        self.network = self._load_weights(package, rdf.get("weights"), where, trust_code, describe_untrusted)
        spatial = [a.letter for a in self.in_axes if a.letter in "ZYX"]
        self.dims = len(spatial)
        channel = [a for a in self.in_axes if a.letter == "C"]
        self.in_channels = (channel[0].size if channel and isinstance(channel[0].size, int) and channel[0].size
                            else None) if channel else 1
        out_channel = [a for a in self.out_axes if a.letter == "C"]
        self.out_channels = (out_channel[0].size if out_channel and isinstance(out_channel[0].size, int)
                             and out_channel[0].size else None) if out_channel else 1
        axes = ("C" if channel and self.in_channels != 1 else "") + "".join(spatial)
        self.config = SimpleNamespace(axes=axes, method="bioimage.io", device="auto")
        self.method = SimpleNamespace(title=f"{self.name} (bioimage.io)", outputs=("denoised",), paper="")
        self.architecture = {"dims": self.dims, "in_channels": self.in_channels or 1, "depth": 0}
        from .training import TrainingState

        self.state = TrainingState()
        self.sample = None

    # ------------------------------------------------------------------ description
    def _check_axes_supported(self, where):
        for axes, what in ((self.in_axes, "input"), (self.out_axes, "output")):
            letters = [a.letter for a in axes]
            bad = [a.id for a in axes if a.letter in "TI"]
            if bad:
                raise ModelFileError(f"{where}: the {what} has a {bad[0]!r} (time/index) axis; napari-selfdenoise "
                                     "runs image-to-image models over space and channel axes only")
            if "Y" not in letters or "X" not in letters or len(set(letters)) != len(letters):
                raise ModelFileError(f"{where}: the {what} axes {''.join(letters)} need one Y and one X axis")
        if [a.letter for a in self.in_axes if a.letter in "ZYX"] != [a.letter for a in self.out_axes
                                                                   if a.letter in "ZYX"]:
            raise ModelFileError(f"{where}: the output's spatial axes differ from the input's; only "
                                 "image-to-image models are supported")
        for axis in self.out_axes:
            if axis.letter in "ZYX":
                size = axis.size
                if not (isinstance(size, tuple) and size[0] == "ref" and size[3] == 1.0 and size[4] == 0):
                    raise ModelFileError(f"{where}: the output's {axis.id} size is not the input's; only models "
                                         "whose output has the input's size are supported")

    _STEPS = {"scale_linear", "zero_mean_unit_variance", "fixed_zero_mean_unit_variance", "scale_range", "clip",
              "sigmoid", "binarize", "ensure_dtype"}

    def _steps(self, steps, where, kind) -> list[tuple[str, dict]]:
        parsed = []
        if steps is not None and not isinstance(steps, list):
            raise ModelFileError(f"{where}: the {kind}-processing is not a list of steps")
        for step in steps or []:
            if not isinstance(step, dict):
                raise ModelFileError(f"{where}: a {kind}-processing step is not a description")
            name = step.get("id") or step.get("name")
            kwargs = step.get("kwargs") or {}
            if not isinstance(kwargs, dict):
                raise ModelFileError(f"{where}: the kwargs of a {kind}-processing step are not a mapping")
            if not isinstance(name, str) or name not in self._STEPS:
                raise ModelFileError(f"{where}: the {kind}-processing step {name!r} is not supported by "
                                     f"napari-selfdenoise (supported: {', '.join(sorted(self._STEPS))})")
            if kwargs.get("reference_tensor") not in (None, self.input.get("id"), self.input.get("name")):
                raise ModelFileError(f"{where}: {name} refers to another tensor; not supported")
            if kwargs.get("mode") == "per_dataset":
                raise ModelFileError(f"{where}: {name} uses dataset statistics the package does not hold; not "
                                     "supported")
            problem = _step_problem(name, kwargs)
            if problem:
                raise ModelFileError(f"{where}: the {kind}-processing step {name} has {problem}; the description "
                                     "is damaged or was not written for bioimage.io")
            parsed.append((name, dict(kwargs)))
        return parsed

    def _load_weights(self, package, weights, where, trust_code: bool, describe_untrusted: bool):
        """The network as data when the package has our architecture's state dict (no trust needed); else
        its ONNX model (checked, no trust needed) or its TorchScript (only when trusted), kept as bytes for
        the child process. Returns the in-process network, or None (run by ``core.sandbox``)."""
        from .safeonnx import check_onnx, onnx_available
        from .safetorch import check_torchscript, read_state_dict

        if not isinstance(weights, dict) or not weights:
            raise ModelFileError(f"{where} has no weights entry")
        state = weights.get("pytorch_state_dict")
        if isinstance(state, dict):
            architecture = state.get("architecture")
            if isinstance(architecture, dict):
                module, callable_ = architecture.get("import_from"), architecture.get("callable")
            else:  # 0.4: "module.path:Name"
                module, _, callable_ = str(architecture or "").rpartition(":")
            from .networks import EXPORT_NETWORKS

            names = {cls.__name__: cls for cls in EXPORT_NETWORKS.values()}
            if module == "napari_selfdenoise.core.networks" and isinstance(callable_, str) and callable_ in names:
                kwargs = (architecture.get("kwargs") if isinstance(architecture, dict) else state.get("kwargs")) or {}
                from .modelfile import check_architecture, check_finite_weights

                # sizes from the file are bounded before anything is read or built (B, issue 13)
                check_architecture(kwargs, f"{where} (pytorch_state_dict architecture)")
                data = package.read(state.get("source"), "pytorch_state_dict weights", state.get("sha256"))
                tensors = read_state_dict(data, f"{package.path} ({state.get('source')})")
                check_finite_weights(tensors, f"{package.path} ({state.get('source')})")
                try:
                    network = names[callable_](**kwargs)
                    network.load_state_dict(tensors)
                except (TypeError, ValueError, KeyError, RuntimeError) as err:
                    raise ModelFileError(f"{where}: the pytorch_state_dict weights do not match their "
                                         f"architecture ({str(err).splitlines()[0]})") from err
                self.weights_note = f"pytorch_state_dict of napari-selfdenoise's {callable_} (data, no code)"
                return network.eval()
        has_torchscript = isinstance(weights.get("torchscript"), dict)
        if isinstance(weights.get("onnx"), dict) and (onnx_available() or not has_torchscript):
            entry = weights["onnx"]
            data = package.read(entry.get("source"), "onnx weights", entry.get("sha256"))
            name = f"{package.path} ({entry.get('source')})"
            check_onnx(data, name)
            if not onnx_available():
                raise SelfDenoiseError(f"{name}: running ONNX weights needs onnxruntime: "
                                       'pip install "napari-selfdenoise[onnx]"')
            self._child_weights = (data, name, "onnx")
            self.weights_note = "ONNX (no external data, standard operators), run by onnxruntime in a separate process"
            return None
        if has_torchscript:
            entry = weights["torchscript"]
            data = package.read(entry.get("source"), "torchscript weights", entry.get("sha256"))
            if not trust_code:
                refusal = UntrustedCodeError(
                    f"{Path(package.path).name} runs TorchScript code written by its author; napari-selfdenoise "
                    "does not run code from a model unless you trust it: pass --trust-code (Python: "
                    f"trust_code=True) if you trust {self.authors}", package=package.path, author=self.authors)
                if not describe_untrusted:
                    raise refusal
                self.weights_note = "TorchScript (code), not loaded: pass --trust-code if you trust its author"
                return None
            name = f"{package.path} ({entry.get('source')})"
            check_torchscript(data, name)
            self._child_weights = (data, name, "torchscript")
            self.weights_note = "TorchScript (code, trusted), run in a separate memory-bounded process"
            return None
        formats = ", ".join(sorted(weights)) or "none"
        raise ModelFileError(f"{package.path} has {formats} weights; napari-selfdenoise runs ONNX and TorchScript "
                             "weights (and pytorch_state_dict weights of its own networks only: it never imports "
                             "code named by a package). Convert the model with bioimageio.core, or use another "
                             "bioimage.io consumer")

    # ------------------------------------------------------------------ checking
    def check_axes(self, shape, axes: str | None = None) -> None:
        from .axes import make_layout

        self._check_compatible(make_layout(tuple(shape), axes or self.config.axes))

    def _check_compatible(self, layout) -> None:
        dims = 3 if layout.is_3d else 2
        if dims != self.dims:
            want = "3D (with a Z axis)" if self.dims == 3 else "2D (without a Z axis)"
            hint = (f"; to denoise the planes one by one, give the axes as {layout.axes.replace('Z', 'T')!r}"
                    if dims == 3 and "T" not in layout.axes else "")
            raise SelfDenoiseError(f"this model is {want}, but the image axes are {layout.axes!r}{hint}")
        if self.in_channels is not None and layout.channels != self.in_channels:
            raise SelfDenoiseError(f"this model expects {self.in_channels} channel(s), the image has "
                                   f"{layout.channels}")
        if self.out_channels is not None and self.out_channels != 1 and "C" not in layout.axes:
            raise SelfDenoiseError(f"this model outputs {self.out_channels} channels; give the image a C axis")

    # ------------------------------------------------------------------ prediction
    def predict(self, image, axes: str | None = None, **kwargs):
        return self.predict_outputs(image, axes, **kwargs)["denoised"]

    def predict_outputs(self, image, axes: str | None = None, *, progress=None, **kwargs):
        from .steps import drain

        return drain(self.predict_steps(image, axes, **kwargs), progress)

    def predict_steps(self, image, axes: str | None = None, *, tile=None, tta: bool = False, batch_size: int = 1,
                      device: str | None = None):
        """Yields (tiles done, total), returns {"denoised": output shaped like the image}. ``tta`` is not
        available for foreign models (ignored with no effect on the result)."""
        from .data import check_image
        from .device import resolve_device

        layout = check_image(image, axes or self.config.axes)
        self._check_compatible(layout)
        target = resolve_device(device or "auto")
        canonical = layout.to_canonical(image)
        n = canonical.shape[0]
        spatial = canonical.shape[2:]
        tiles = self._tile_shape(spatial, tile)
        plans = [self._plan(size, t, axis) for size, t, axis in
                 zip(spatial, tiles, [a for a in self.in_axes if a.letter in "ZYX"])]
        total, done = n * int(np.prod([len(p[1]) for p in plans])), 0
        results = []
        with self._runner(target) as run:
            for i in range(n):
                sample = np.asarray(canonical[i], dtype=np.float32)  # (C, [Z,] Y, X)
                x = self._apply_steps(self._to_model(sample), self.preprocessing, self.in_axes)
                out = None
                weights = None
                for box, window in self._boxes(plans):
                    piece = run(self._crop(x, box, plans))
                    self._check_piece(piece, box)
                    if out is None:
                        shape = list(piece.shape)
                        for axis, size in zip(self._spatial_positions(self.out_axes), [p[0] for p in plans]):
                            shape[axis] = size
                        out = np.zeros(shape, np.float32)
                        weights = np.zeros([p[0] for p in plans], np.float32)
                    self._accumulate(out, weights, piece, box, window)
                    done += 1
                    yield done, total
                out = out / self._expand(weights, self.out_axes)
                out = self._uncrop(out, spatial)
                out = self._apply_steps(out, self.postprocessing, self.out_axes)
                results.append(self._from_model(out))
        stacked = np.stack(results)  # (N, C_out, [Z,] Y, X)
        c_out = stacked.shape[1]
        return {"denoised": np.ascontiguousarray(layout.from_canonical(stacked, channels=c_out), np.float32)}

    # Tiles: sizes valid for the model (fixed, or min + k * step), overlapping by twice the output halo.
    # Tiles the description may make us allocate (its fixed or minimal sizes): 64 M pixels, 256 MB of float32.
    MAX_TILE_PIXELS = 2**26

    def _tile_shape(self, spatial, tile):
        from .prediction import check_tile

        if isinstance(check_tile(tile), (tuple, list)):
            raise SelfDenoiseError("foreign bioimage.io models take one tile edge (a number), not one per axis")
        default = {2: 512, 3: 128}[self.dims] if tile is None else int(tile)
        sizes = []
        for axis, size in zip([a for a in self.in_axes if a.letter in "ZYX"], spatial):
            want = min(size, default if axis.letter != "Z" or tile is not None else 64)
            sizes.append(self._valid_size(axis, want))
        if int(np.prod(sizes)) > self.MAX_TILE_PIXELS:
            raise SelfDenoiseError(f"{self.path}: the model asks for tiles of {' x '.join(map(str, sizes))} pixels, "
                                   f"more than {self.MAX_TILE_PIXELS} in all; it cannot be run here")
        return sizes

    @staticmethod
    def _valid_size(axis, want: int) -> int:
        size = axis.size
        if isinstance(size, int):
            return size
        minimum, step = size[:2]  # minimum >= 1, step >= 0 (checked by _checked_sizes)
        if step <= 0 or want <= minimum:
            return minimum
        return minimum + -(-(want - minimum) // step) * step

    def _plan(self, size, tile, axis):
        from .prediction import _ramp, tile_starts

        halo = max([a.halo for a in self.out_axes if a.letter == axis.letter] + [0])
        padded = max(size, tile)
        overlap = min(2 * halo + 16, tile // 2) if padded > tile else 0
        starts = tile_starts(padded, tile, overlap, 1)
        margin = max(0, min(halo, (overlap - 1) // 2))
        windows = [_ramp(tile, margin, max(1, overlap - 2 * margin), s > 0, s + tile < padded) for s in starts]
        return padded, starts, windows, tile

    def _boxes(self, plans):
        import itertools

        for index in itertools.product(*[range(len(p[1])) for p in plans]):
            box = [(p[1][k], p[3]) for p, k in zip(plans, index)]
            window = [p[2][k] for p, k in zip(plans, index)]
            yield box, window

    def _spatial_positions(self, axes):
        return [i for i, a in enumerate(axes) if a.letter in "ZYX"]

    def _to_model(self, sample):
        """(C, [Z,] Y, X) -> the model's input layout (batch of 1)."""
        order = "C" + "ZYX"[3 - self.dims:]
        array = sample
        letters = list(order)
        if not any(a.letter == "C" for a in self.in_axes):
            array = array[0]
            letters.remove("C")
        if any(a.letter == "B" for a in self.in_axes):
            array = array[None]
            letters.insert(0, "B")
        wanted = [a.letter for a in self.in_axes]
        return np.ascontiguousarray(np.transpose(array, [letters.index(w) for w in wanted]))

    def _from_model(self, out):
        """The model's output layout -> (C_out, [Z,] Y, X)."""
        letters = [a.letter for a in self.out_axes]
        array = out
        if "B" in letters:
            array = np.take(array, 0, axis=letters.index("B"))
            letters.remove("B")
        if "C" not in letters:
            array = array[None]
            letters.insert(0, "C")
        order = "C" + "ZYX"[3 - self.dims:]
        return np.transpose(array, [letters.index(w) for w in order])

    def _crop(self, x, box, plans):
        """The tile at ``box`` of the (padded as needed) model-layout input."""
        positions = self._spatial_positions(self.in_axes)
        pad = [(0, 0)] * x.ndim
        for axis, plan in zip(positions, plans):
            pad[axis] = (0, plan[0] - x.shape[axis])
        if any(p[1] for p in pad):
            mode = "reflect" if all(p[1] < x.shape[i] for i, p in enumerate(pad)) else "symmetric"
            x = np.pad(x, pad, mode=mode)
        index = [slice(None)] * x.ndim
        for axis, (start, size) in zip(positions, box):
            index[axis] = slice(start, start + size)
        return x[tuple(index)]

    def _check_piece(self, piece, box) -> None:
        positions = self._spatial_positions(self.out_axes)
        if piece.ndim != len(self.out_axes) or any(piece.shape[p] != size for p, (_, size) in zip(positions, box)):
            raise ModelFileError(f"{self.path}: the model returned an output of shape {tuple(piece.shape)} for a "
                                 f"tile of {'x'.join(str(size) for _, size in box)} pixels, which its rdf.yaml "
                                 "does not describe; the package does not work as described")

    @contextlib.contextmanager
    def _runner(self, device):
        """A function tile -> first output (float32), for the length of one prediction: ONNX and TorchScript
        in a child process (``core.sandbox``, ended when the prediction ends), our networks in this one."""
        if self._child_weights is not None:
            from .sandbox import ModelProcess

            data, name, kind = self._child_weights
            with ModelProcess(data, name, device=str(device), kind=kind) as child:
                yield child.run
            return
        if self.network is None:
            raise UntrustedCodeError(f"{Path(self.path).name}: its TorchScript weights were not loaded (not "
                                     "trusted); load it with trust_code=True (--trust-code) to run it",
                                     package=self.path, author=self.authors)

        def run(tile):
            try:
                with torch.no_grad():
                    result = self.network(torch.from_numpy(np.ascontiguousarray(tile)).to(device))
            except RuntimeError as err:  # e.g. tile sizes from rdf.yaml that the network cannot pool
                raise ModelFileError(f"{self.path}: the model failed on a tile of shape {tuple(tile.shape)} "
                                     f"({str(err).splitlines()[0][:200] if str(err) else 'no details'}); its "
                                     "rdf.yaml does not describe what the network accepts") from err
            if isinstance(result, (tuple, list)):
                result = result[0]
            return result.float().cpu().numpy()

        self.network.to(device)
        try:
            yield run
        finally:
            self.network.to("cpu")

    def _expand(self, weights, axes):
        shape = [1] * len(axes)
        for position, size in zip(self._spatial_positions(axes), weights.shape):
            shape[position] = size
        return weights.reshape(shape)

    def _accumulate(self, out, weights, piece, box, window):
        w = window[0]
        for v in window[1:]:
            w = np.multiply.outer(w, v)
        w = w.astype(np.float32)
        index = [slice(None)] * out.ndim
        for position, (start, size) in zip(self._spatial_positions(self.out_axes), box):
            index[position] = slice(start, start + size)
        out[tuple(index)] += piece * self._expand(w, self.out_axes)
        weights[tuple(slice(s, s + n) for s, n in box)] += w

    def _uncrop(self, out, spatial):
        index = [slice(None)] * out.ndim
        for position, size in zip(self._spatial_positions(self.out_axes), spatial):
            index[position] = slice(0, size)
        return out[tuple(index)]

    def _apply_steps(self, x, steps, axes):
        x = np.asarray(x, np.float32)
        for name, kwargs in steps:
            x = _apply_step(name, kwargs, x, axes, self.version)
        return x

    def describe(self) -> list[tuple[str, str]]:
        return [("model", str(self.path)), ("kind", "bioimage.io package (foreign; prediction only)"),
                ("name", self.name), ("axes", "".join(a.letter for a in self.in_axes).replace("B", "")),
                ("network", f"{self.dims}D, {self.in_channels or 'any'} channel(s) in, "
                            f"{self.out_channels or 'any'} out"),
                ("authors", self.authors), ("weights", self.weights_note),
                ("description", self.description[:200])]


def _author_names(authors) -> str:
    """The rdf's authors as one short phrase for messages ("its author" when it names none)."""
    names = [str(a.get("name") if isinstance(a, dict) else a).strip() for a in authors or []
             if isinstance(a, (dict, str))] if isinstance(authors, list) else []
    names = [n for n in names if n and n != "None"]
    if not names:
        return "its author"
    return ", ".join(names[:3]) + (" et al." if len(names) > 3 else "")


_DTYPES = {"float32", "float64", "float16", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64",
           "int64", "bool"}


def _is_number(value) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return abs(value) < 2**63 if isinstance(value, int) else bool(np.isfinite(value))  # no float of a bigint


def _numbers(value) -> bool:
    """One finite number, or a non-empty list of them (per-channel parameters)."""
    if isinstance(value, list):
        return 0 < len(value) <= 4096 and all(_is_number(v) for v in value)
    return _is_number(value)


def _step_problem(name: str, kwargs: dict) -> str | None:
    """What is wrong with a processing step's arguments (named, as the message's end), or None."""
    axes = kwargs.get("axes", kwargs.get("axis"))
    if axes is not None and not (isinstance(axes, str) or (isinstance(axes, list)
                                                           and all(isinstance(a, str) for a in axes))):
        return "axes that are not axis names"
    if "eps" in kwargs and not (_is_number(kwargs["eps"]) and 0 < kwargs["eps"] <= 1):
        return f"an eps of {str(kwargs['eps'])[:40]} (give a small positive number)"
    if name == "ensure_dtype" and str(kwargs.get("dtype", "float32")) not in _DTYPES:
        return f"the unknown dtype {str(kwargs.get('dtype'))[:40]!r}"
    numeric = {"scale_linear": ("gain", "offset"), "binarize": ("threshold",), "clip": ("min", "max"),
               "scale_range": ("min_percentile", "max_percentile"),
               "fixed_zero_mean_unit_variance": ("mean", "std")}.get(name, ())
    if name == "zero_mean_unit_variance" and kwargs.get("mode") == "fixed":
        numeric = ("mean", "std")
    for key in numeric:
        required = key in ("mean", "std")
        if key not in kwargs and required:
            return f"no {key}"
        if key in kwargs and not _numbers(kwargs[key]):
            return f"a {key} of {str(kwargs[key])[:40]!r} (give a number or a list of numbers)"
    if name == "scale_range":
        low, high = kwargs.get("min_percentile", 0), kwargs.get("max_percentile", 100)
        if not (_is_number(low) and _is_number(high) and 0 <= low < high <= 100):
            return f"percentiles {low!r} and {high!r} (give 0 <= min_percentile < max_percentile <= 100)"
    if name == "clip" and _is_number(kwargs.get("min")) and _is_number(kwargs.get("max")) \
            and kwargs["min"] > kwargs["max"]:
        return "a min above its max"
    if name in ("fixed_zero_mean_unit_variance", "zero_mean_unit_variance") and "std" in kwargs and \
            any(v < 0 for v in np.atleast_1d(kwargs["std"])):
        return "a negative std"
    return None


def _reduce_axes(kwargs, axes, x) -> tuple[int, ...] | None:
    """The array axes a statistic is taken over: those named in ``axes`` (0.4: letters; 0.5: ids), or all."""
    named = kwargs.get("axes")
    if named is None:
        return None
    names = list(named) if isinstance(named, str) else [str(a) for a in named]
    index = {a.id: i for i, a in enumerate(axes)}
    index.update({a.letter.lower(): i for i, a in enumerate(axes)})
    return tuple(index[n] for n in names if n in index)


def _along(values, kwargs, axes, x):
    """Per-channel (or per-axis) parameters broadcast against ``x``."""
    values = np.asarray(values, np.float32)
    if values.ndim == 0 or values.size == 1:
        return values.reshape(()) if values.size == 1 else values
    axis_id = kwargs.get("axis")
    position = None
    if axis_id is not None:
        position = next((i for i, a in enumerate(axes) if a.id == axis_id or a.letter.lower() == str(axis_id)), None)
    if position is None:
        position = next((i for i, a in enumerate(axes) if a.letter == "C"), None)
    if position is None or x.shape[position] != values.size:
        raise SelfDenoiseError(f"a processing step has {values.size} values, which do not fit the image's axes")
    shape = [1] * x.ndim
    shape[position] = values.size
    return values.reshape(shape)


def _apply_step(name, kwargs, x, axes, version):
    eps = float(kwargs.get("eps", 1e-6))
    if name == "ensure_dtype":
        return x.astype(np.dtype(str(kwargs.get("dtype", "float32"))), copy=False).astype(np.float32)
    if name == "scale_linear":
        return x * _along(kwargs.get("gain", 1.0), kwargs, axes, x) + _along(kwargs.get("offset", 0.0), kwargs, axes, x)
    if name == "fixed_zero_mean_unit_variance" or (name == "zero_mean_unit_variance" and kwargs.get("mode") == "fixed"):
        mean, std = _along(kwargs["mean"], kwargs, axes, x), _along(kwargs["std"], kwargs, axes, x)
        return (x - mean) / (std + eps)
    if name == "zero_mean_unit_variance":
        reduce = _reduce_axes(kwargs, axes, x)
        return (x - x.mean(axis=reduce, keepdims=True)) / (x.std(axis=reduce, keepdims=True) + eps)
    if name == "scale_range":
        reduce = _reduce_axes(kwargs, axes, x)
        low_p, high_p = float(kwargs.get("min_percentile", 0)), float(kwargs.get("max_percentile", 100))
        low = np.percentile(x, low_p, axis=reduce, keepdims=True)
        high = np.percentile(x, high_p, axis=reduce, keepdims=True)
        return (x - low) / (high - low + eps)
    if name == "clip":
        return np.clip(x, kwargs.get("min"), kwargs.get("max"))
    if name == "sigmoid":
        return 1 / (1 + np.exp(-x))
    if name == "binarize":
        return (x > _along(kwargs.get("threshold", 0.5), kwargs, axes, x)).astype(np.float32)
    raise SelfDenoiseError(f"processing step {name!r} is not supported")


def _user_name() -> str:
    """The default author: the login name, unless it is a system account."""
    name = os.environ.get("USER") or os.environ.get("USERNAME") or ""
    return name if name and name not in ("root", "admin", "user") else "napari-selfdenoise user"
