"""Export a ``Denoiser`` as a bioimage.io model package (spec 0.5): the rdf, test tensors, cover, README
and both weights formats, written atomically (see the package docstring for the layout)."""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import re
import string
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ..._version import __version__
from ..data.checks import check_image
from ..data.patches import sample_crop
from ..errors import SelfDenoiseError
from ..io.atomic import atomic_write
from ..io.outputs import plan_output
from ..nn.networks import build_export_network, receptive_radius
from .package import CONFIG_KEY, NATIVE, RDF
from .png import cover_png

FORMAT_VERSION = "0.5.4"
INPUT_ID = "raw"
DEFAULT_LICENSE = "CC-BY-4.0"
NAME_CHARACTERS = set(string.ascii_letters + string.digits + "_+- ()")

OUTPUT_DESCRIPTIONS = {
    "denoised": "the denoised image, in the input's units",
    "noise_std": "the predicted standard deviation of the noise at each pixel, in the input's units",
}


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
    if not denoiser.trainable:
        raise SelfDenoiseError("this model came from a foreign bioimage.io package; it is already one")
    if denoiser.network is None or denoiser.architecture is None:
        raise SelfDenoiseError("nothing to export: the model is not trained yet")
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
        layout = check_image(image, axes or denoiser.config.axes, "the test image")
        denoiser.check_layout(layout)
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
        "cite": [_cite(method.citation)],  # the method's paper (Method.citation)
        "license": license,
        "tags": tags,
        "version": "1",
        "covers": ["cover.png"],
        "documentation": "README.md",
        "timestamp": datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat(),
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
                                 "import_from": "napari_selfdenoise.core.nn.networks",
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


def _cite(citation) -> dict[str, str]:
    """An rdf ``cite`` entry: the text, and the DOI when the paper has one."""
    return {"text": citation.text, **({"doi": citation.doi} if citation.doi else {})}


def _linear(gain, offset) -> list[dict]:
    """A ``scale_linear`` step (per channel when there are several), or none when it would be identity."""
    gain, offset = [float(g) for g in np.atleast_1d(gain)], [float(o) for o in np.atleast_1d(offset)]
    if all(g == 1.0 for g in gain) and all(o == 0.0 for o in offset):
        return []
    if len(gain) == 1:
        return [{"id": "scale_linear", "kwargs": {"gain": gain[0], "offset": offset[0]}}]
    return [{"id": "scale_linear", "kwargs": {"axis": "channel", "gain": gain, "offset": offset}}]


def _native_header(denoiser) -> dict:
    header, *_ = denoiser.file_parts(include_training_state=False)
    header = {"format": "napari-selfdenoise-model", "package_version": __version__, **header}
    return json.loads(json.dumps(header, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def readme(denoiser, name: str, description: str, sample_shape) -> str:
    config, state, arch = denoiser.config, denoiser.state, denoiser.architecture
    text, doi = denoiser.method.citation.text, denoiser.method.citation.doi
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
- {state.step} steps, patch {config.patch}, batch {config.batch}, learning rate {config.lr_text()}, seed {config.seed};
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


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _yaml(data) -> bytes:
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


def _user_name() -> str:
    """The default author: the login name, unless it is a system account."""
    name = os.environ.get("USER") or os.environ.get("USERNAME") or ""
    return name if name and name not in ("root", "admin", "user") else "napari-selfdenoise user"
