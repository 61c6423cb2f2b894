"""``ForeignModel``: a bioimage.io model made elsewhere, for prediction only."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..data.axes import make_layout
from ..data.checks import check_image
from ..data.lazy import as_array, nbytes
from ..errors import ModelFileError, SelfDenoiseError, UntrustedCodeError
from ..io.modelfile import check_architecture, check_finite_weights
from ..nn.device import resolve_device
from ..nn.networks import EXPORT_NETWORKS
from ..predict.predictor import check_fits
from ..predict.streaming import check_target, tile_reader, write_blocks
from ..predict.tiled import TilePlan, check_tile
from ..steps import drain
from ..trust.safeonnx import check_onnx, onnx_available
from ..trust.safetorch import check_torchscript
from ..trust.sandbox import ModelProcess
from ..trust.state_dict import read_state_dict
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

    trainable = False  # a ``core.predict.predictor.Predictor``, not a ``Denoiser``: nothing else of it is there
    outputs = ("denoised",)

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
        self._axes = ("C" if channel and self.in_channels != 1 else "") + "".join(spatial)

    @property
    def method_name(self) -> str:
        return "bioimage.io"

    @property
    def title(self) -> str:
        return f"{self.name} (bioimage.io)"

    @property
    def axes(self) -> str:
        """The axes an image is taken to have by default: the model's input axes without the batch."""
        return self._axes

    @property
    def trained(self) -> bool:
        """Whether it has weights to run (not so for an untrusted package loaded to be described)."""
        return self.network is not None or self._child_weights is not None

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
        the child process. Returns the in-process network, or None (run by ``core.trust.sandbox``)."""
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
            if module == "napari_selfdenoise.core.nn.networks" and isinstance(callable_, str) and callable_ in names:
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
        self.check_layout(make_layout(tuple(shape), axes or self.axes))

    def check_layout(self, layout) -> None:
        check_fits(layout, self.dims, self.in_channels, self.out_channels)

    # ------------------------------------------------------------------ prediction
    def predict(self, image, axes: str | None = None, **options) -> np.ndarray:
        return self.predict_outputs(image, axes, **options)["denoised"]

    def predict_outputs(self, image, axes: str | None = None, *, progress=None, **options) -> dict[str, np.ndarray]:
        return drain(self.predict_steps(image, axes, **options), progress)

    def predict_steps(self, image, axes: str | None = None, *, tile=None, device: str | None = None,
                      **ignored):
        """Yields (tiles done, total), returns {"denoised": output shaped like the image}. The options of
        our own networks (``tta``, ``batch_size``, ``precision``, ``compiled``) have no effect here; they
        are accepted so that a front end passes the same options to every ``Predictor``."""
        layout = check_image(image, axes or self.axes)
        self.check_layout(layout)
        canonical = layout.to_canonical(image)
        plan = self.plan(layout.spatial_shape, tile)
        whole = tuple((0, size) for size in layout.spatial_shape)
        total, done = canonical.shape[0] * plan.count, 0
        results = []
        with self._runner(resolve_device(device or "auto")) as run:
            for i in range(canonical.shape[0]):
                sample = np.asarray(canonical[i], dtype=np.float32)  # (C, [Z,] Y, X)
                # pre-processing may take statistics of the whole image: applied before it is cut into tiles
                x = self._pad(self._apply_steps(self._to_tensor(sample, self.in_axes), self.preprocessing,
                                                self.in_axes), plan.padded)
                blending = self._blend(run, plan, lambda box, x=x: x[self._tensor_index(box, self.in_axes)], whole)
                while True:
                    try:
                        next(blending)
                    except StopIteration as end:
                        results.append(self._postprocess(end.value))
                        break
                    done += 1
                    yield done, total
        stacked = np.stack(results)  # (N, C_out, [Z,] Y, X)
        return {"denoised": np.ascontiguousarray(layout.from_canonical(stacked, channels=stacked.shape[1]),
                                                 np.float32)}

    def predict_to(self, image, out, axes: str | None = None, *, noise_std=None, overwrite: bool = False,
                   scale=None, units=None, progress=None, **options) -> list[Path]:
        """``Denoiser.predict_to`` for this model: ``image`` predicted block by block into ``out``
        (``.ome.zarr``/``.zarr`` or ``.ome.tif``) with bounded memory. Returns the paths written."""
        if noise_std is not None:
            raise SelfDenoiseError(f"{Path(self.path).name} has no noise-std output; only nnet models do")
        return drain(self.predict_to_steps(image, {"denoised": out}, axes, overwrite=overwrite, scale=scale,
                                           units=units, **options), progress)

    def predict_to_steps(self, image, targets: dict, axes: str | None = None, *, overwrite: bool = False,
                         scale=None, units=None, tile=None, device: str | None = None, block=None, **ignored):
        """``predict_to`` as a generator of (blocks done, blocks), through ``streaming.write_blocks``.

        A block's tiles are pre-processed one by one, so only pixel-wise steps can be streamed; a model
        whose processing takes statistics of the whole image (``zero_mean_unit_variance``, ``scale_range``)
        predicts images that fit in memory only (one line says so)."""
        image = as_array(image)
        layout = check_image(image, axes or self.axes)
        self.check_layout(layout)
        unknown = set(targets) - set(self.outputs)
        if unknown:
            raise SelfDenoiseError(f"{Path(self.path).name} has no {', '.join(sorted(unknown))} output; it has "
                                   "denoised only")
        self._check_streamable(layout, nbytes(image))
        paths = {name: check_target(path, overwrite) for name, path in targets.items()}
        plan = self.plan(layout.spatial_shape, tile)
        with self._runner(resolve_device(device or "auto")) as run:
            def predict(block_):
                read = tile_reader(image, layout, block_.sample)

                def read_tile(box):
                    raw = read(box).astype(np.float32, copy=False)
                    return self._apply_steps(self._to_tensor(raw, self.in_axes), self.preprocessing, self.in_axes)

                return {"denoised": self._postprocess(drain(self._blend(run, plan, read_tile, block_.box)))}

            return (yield from write_blocks(paths, image, layout, predict, overwrite=overwrite, scale=scale,
                                            units=units, block=block))

    _STATISTICS = frozenset({"zero_mean_unit_variance", "scale_range"})  # need the whole image

    def _check_streamable(self, layout, size: int) -> None:
        steps = [name for name, kwargs in self.preprocessing + self.postprocessing
                 if name in self._STATISTICS and kwargs.get("mode") != "fixed"]
        if steps:
            raise SelfDenoiseError(f"{Path(self.path).name} normalises with statistics of the whole image "
                                   f"({steps[0]}), so it cannot predict block by block; this image "
                                   f"({size / 1e9:.1f} GB) must fit in memory: crop it, or give it as smaller files")
        if self.out_channels not in (None, layout.channels):
            raise SelfDenoiseError(f"{Path(self.path).name} makes {self.out_channels} channel(s) from "
                                   f"{layout.channels}; only models that keep the channel count predict block by "
                                   "block: predict a smaller image in memory")

    def plan(self, spatial, tile=None) -> TilePlan:
        """The tile grid (``prediction.TilePlan``, the native predictor's): tiles of sizes the model
        accepts, overlapping by twice the output halo plus a blending ramp, one tile per call."""
        tiles = self._tile_shape(spatial, tile)
        halos = [max([a.halo for a in self.out_axes if a.letter == axis.letter] + [0])
                 for axis in self.in_axes if axis.letter in "ZYX"]
        padded = tuple(max(size, t) for size, t in zip(spatial, tiles))
        overlaps = [min(2 * halo + 16, t // 2) if p > t else 0 for halo, t, p in zip(halos, tiles, padded)]
        margins = [max(0, min(halo, (overlap - 1) // 2)) for halo, overlap in zip(halos, overlaps)]
        return TilePlan.build(tuple(spatial), padded, tuple(tiles), overlaps, margins, (1,) * len(tiles),
                              batch_size=1)

    def _blend(self, run, plan: TilePlan, read_tile, block):
        """Runs the tiles of ``plan`` that touch ``block`` (model-layout input from ``read_tile(box)``),
        yielding (tiles done, tiles), and returns their blend (C_out, *block): ``TilePlan.add_tile`` in
        grid order, so a block's pixels get bit for bit the whole image's values."""
        shape = tuple(hi - lo for lo, hi in block)
        accumulated = weights = None
        tiles = plan.touching(block)
        for k, j in enumerate(tiles):
            box = plan.box(j)
            piece = run(read_tile(box))
            self._check_piece(piece, box)
            piece = self._from_tensor(piece, self.out_axes)
            if accumulated is None:
                accumulated = np.zeros((piece.shape[0], *shape), np.float32)
                weights = np.zeros(shape, np.float32)
            plan.add_tile(j, piece, block, accumulated, weights)
            yield k + 1, len(tiles)
        return accumulated / weights

    def _postprocess(self, blended: np.ndarray) -> np.ndarray:
        """The post-processing (on the model's output layout) of a blended (C_out, *spatial) result."""
        out = self._apply_steps(self._to_tensor(blended, self.out_axes), self.postprocessing, self.out_axes)
        return self._from_tensor(out, self.out_axes)

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
        minimum, step = size[:2]  # minimum >= 1, step >= 0 (checked by tensors.checked_sizes)
        if step <= 0 or want <= minimum:
            return minimum
        return minimum + -(-(want - minimum) // step) * step

    # ------------------------------------------------------------------ layouts
    def _to_tensor(self, array: np.ndarray, tensor_axes) -> np.ndarray:
        """(C, [Z,] Y, X) -> a tensor with ``tensor_axes`` (a batch of 1; C dropped if it has none)."""
        letters = ["C", *"ZYX"[3 - self.dims:]]
        if not any(a.letter == "C" for a in tensor_axes):
            array = array[0]
            letters.remove("C")
        if any(a.letter == "B" for a in tensor_axes):
            array = array[None]
            letters.insert(0, "B")
        return np.ascontiguousarray(np.transpose(array, [letters.index(a.letter) for a in tensor_axes]))

    def _from_tensor(self, array: np.ndarray, tensor_axes) -> np.ndarray:
        """A tensor with ``tensor_axes`` -> (C, [Z,] Y, X) (the first of its batch)."""
        letters = [a.letter for a in tensor_axes]
        if "B" in letters:
            array = np.take(array, 0, axis=letters.index("B"))
            letters.remove("B")
        if "C" not in letters:
            array = array[None]
            letters.insert(0, "C")
        return np.transpose(array, [letters.index(w) for w in ["C", *"ZYX"[3 - self.dims:]]])

    def _tensor_index(self, box, tensor_axes) -> tuple:
        """The index of a spatial ``box`` (slices) in a tensor with ``tensor_axes``."""
        spatial = iter(box)
        return tuple(next(spatial) if a.letter in "ZYX" else slice(None) for a in tensor_axes)

    def _pad(self, x: np.ndarray, padded) -> np.ndarray:
        """The model-layout input padded at the far ends to the plan's ``padded`` shape (tiles of a fixed
        size may be larger than the image)."""
        pad = [(0, 0)] * x.ndim
        positions = [i for i, a in enumerate(self.in_axes) if a.letter in "ZYX"]
        for axis, size in zip(positions, padded):
            pad[axis] = (0, size - x.shape[axis])
        if not any(p[1] for p in pad):
            return x
        mode = "reflect" if all(p[1] < x.shape[i] for i, p in enumerate(pad)) else "symmetric"
        return np.pad(x, pad, mode=mode)

    def _check_piece(self, piece, box) -> None:
        positions = [i for i, a in enumerate(self.out_axes) if a.letter in "ZYX"]
        sizes = [s.stop - s.start for s in box]
        if piece.ndim != len(self.out_axes) or any(piece.shape[p] != size for p, size in zip(positions, sizes)):
            raise ModelFileError(f"{self.path}: the model returned an output of shape {tuple(piece.shape)} for a "
                                 f"tile of {'x'.join(map(str, sizes))} pixels, which its rdf.yaml "
                                 "does not describe; the package does not work as described")

    @contextlib.contextmanager
    def _runner(self, device):
        """A function tile -> first output (float32), for the length of one prediction: ONNX and TorchScript
        in a child process (``core.trust.sandbox``, ended when the prediction ends), our networks in this one."""
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

