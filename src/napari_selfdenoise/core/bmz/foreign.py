"""``ForeignModel``: a bioimage.io model made elsewhere, for prediction only."""

from __future__ import annotations

import contextlib
import itertools
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..axes import make_layout
from ..data import check_image
from ..device import resolve_device
from ..errors import ModelFileError, SelfDenoiseError, UntrustedCodeError
from ..modelfile import check_architecture, check_finite_weights
from ..networks import EXPORT_NETWORKS
from ..prediction import _ramp, check_tile, tile_starts
from ..safeonnx import check_onnx, onnx_available
from ..safetorch import check_torchscript, read_state_dict
from ..sandbox import ModelProcess
from ..steps import drain
from ..training import TrainingState
from .tensors import apply_step, parse_axes, step_problem

if TYPE_CHECKING:
    from .package import _Package

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
            self.in_axes = parse_axes(self.input, version)
            self.out_axes = parse_axes(self.output, version)
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

    _STEPS = frozenset({"scale_linear", "zero_mean_unit_variance", "fixed_zero_mean_unit_variance", "scale_range",
                        "clip", "sigmoid", "binarize", "ensure_dtype"})

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
            problem = step_problem(name, kwargs)
            if problem:
                raise ModelFileError(f"{where}: the {kind}-processing step {name} has {problem}; the description "
                                     "is damaged or was not written for bioimage.io")
            parsed.append((name, dict(kwargs)))
        return parsed

    def _load_weights(self, package, weights, where, trust_code: bool, describe_untrusted: bool):
        """The network as data when the package has our architecture's state dict (no trust needed); else
        its ONNX model (checked, no trust needed) or its TorchScript (only when trusted), kept as bytes for
        the child process. Returns the in-process network, or None (run by ``core.sandbox``)."""
        if not isinstance(weights, dict) or not weights:
            raise ModelFileError(f"{where} has no weights entry")
        state = weights.get("pytorch_state_dict")
        if isinstance(state, dict):
            architecture = state.get("architecture")
            if isinstance(architecture, dict):
                module, callable_ = architecture.get("import_from"), architecture.get("callable")
            else:  # 0.4: "module.path:Name"
                module, _, callable_ = str(architecture or "").rpartition(":")
            names = {cls.__name__: cls for cls in EXPORT_NETWORKS.values()}
            if module == "napari_selfdenoise.core.networks" and isinstance(callable_, str) and callable_ in names:
                kwargs = (architecture.get("kwargs") if isinstance(architecture, dict) else state.get("kwargs")) or {}
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
        return drain(self.predict_steps(image, axes, **kwargs), progress)

    def predict_steps(self, image, axes: str | None = None, *, tile=None, tta: bool = False, batch_size: int = 1,
                      device: str | None = None):
        """Yields (tiles done, total), returns {"denoised": output shaped like the image}. ``tta`` is not
        available for foreign models (ignored with no effect on the result)."""
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
        halo = max([a.halo for a in self.out_axes if a.letter == axis.letter] + [0])
        padded = max(size, tile)
        overlap = min(2 * halo + 16, tile // 2) if padded > tile else 0
        starts = tile_starts(padded, tile, overlap, 1)
        margin = max(0, min(halo, (overlap - 1) // 2))
        windows = [_ramp(tile, margin, max(1, overlap - 2 * margin), s > 0, s + tile < padded) for s in starts]
        return padded, starts, windows, tile

    def _boxes(self, plans):
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
            x = apply_step(name, kwargs, x, axes, self.version)
        return x

    def describe(self) -> list[tuple[str, str]]:
        return [("model", str(self.path)), ("kind", "bioimage.io package (foreign; prediction only)"),
                ("name", self.name), ("axes", "".join(a.letter for a in self.in_axes).replace("B", "")),
                ("network", f"{self.dims}D, {self.in_channels or 'any'} channel(s) in, {self.out_channels or 'any'} out"),
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

