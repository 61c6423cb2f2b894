"""``Denoiser``: the one facade over config, data, network, training, prediction and model files.

The widget, the CLI and the tests all drive the engine through it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .._version import __version__
from .bmz import ForeignModel, NativeInPackage, export_bmz, is_bmz_package, read_bmz
from .config import TrainConfig
from .data.axes import make_layout
from .data.checks import check_image, check_same_axes_shape
from .data.lazy import LAZY_THRESHOLD, as_array, nbytes
from .data.normalize import Normalization
from .data.patches import sample_crop
from .errors import ModelFileError, SelfDenoiseError
from .io.modelfile import (
    check_architecture,
    check_finite_weights,
    flatten_optimizer_state,
    load_model,
    model_bytes,
    save_model,
    unflatten_optimizer_state,
)
from .methods import get_method, options_from_file
from .nn.device import resolve_device
from .nn.networks import ARCHITECTURE_DEFAULTS, auto_z_levels, build_network
from .predict.predictor import check_fits
from .predict.streaming import predict_to_disk
from .predict.tiled import TiledPredictor
from .steps import drain
from .training.auto import AUTO, CLASSIC, AutoResult
from .training.trainer import ProgressEvent, Trainer, TrainingState


class Denoiser:
    """Train a self-supervised denoiser on noisy images, predict, save and load it.

    >>> model = Denoiser("n2s", axes="YX", steps=500)
    >>> model.fit(noisy)                # or: for event in model.train(noisy): ...
    >>> clean = model.predict(noisy)    # float32, the input's shape and units

    Method "auto" (the default) races the candidates on one self-supervised score (``core.training.auto``): its
    first event carries the calibrated classical filter (``extra["classic"]``), every event the live score
    table (``extra["scores"]``: a list of {method, score, stderr, steps, status, elapsed}, status "running",
    "dropped" or "winner") and the candidate training (``extra["candidate"]``); the last one (done) also
    the ``AutoResult`` (``extra["auto"]``). Training then leaves the model as the winning method's, with
    ``self.auto`` (winner, score table, quality estimate) stored in the model file under "auto".
    """

    def __init__(self, method: str = AUTO, axes: str = "YX", *, config: TrainConfig | None = None, **options):
        self.config = config or TrainConfig(method=method, axes=axes, **options)
        # "auto" becomes a method when its race ends; until then it has none (the options are checked here)
        self.method = None if self.config.method == AUTO else get_method(self.config.method,
                                                                          self.config.method_options)
        if self.method is not None:  # every option's value goes into model files (Method.legacy_defaults)
            self.config = replace(self.config, method_options=dict(self.method.options))
        if self.method is None:
            from .training.auto import check_candidates, split_options

            per_candidate = split_options(self.config.method_options, check_candidates(self.config.method_options))
            for name, candidate_options in per_candidate.items():  # checked now, not when the race reaches them
                get_method(name, candidate_options)
        self.auto: AutoResult | None = None  # what method "auto" chose, and why
        self._race = None
        self._stop_pending = False  # stop() before the trainer exists (see train)
        self.network: torch.nn.Module | None = None
        self.normalization: Normalization | None = None
        self.architecture: dict | None = None
        self.state = TrainingState()
        # A small crop of the training data (raw units, canonical (1, C, [Z,] Y, X)), kept in the model file
        # for the test tensors and cover image of a bioimage.io export.
        self.sample: np.ndarray | None = None
        self.package_version = __version__
        self._trainer: Trainer | None = None

    # ----------------------------------------------------------------- training
    def train(self, images) -> Iterator[ProgressEvent]:
        """Train on one array or a list of arrays with ``config.axes``; yields progress events.

        Calling it again continues training (fine-tuning) with the optimizer state kept.
        """
        self._stop_pending = False
        arrays = [as_array(a) for a in (images if isinstance(images, (list, tuple)) else [images])]
        if not arrays:
            raise SelfDenoiseError("no images to train on")
        layouts = check_same_axes_shape(arrays, self.config.axes)
        if self.method is None:  # method "auto", not raced yet
            yield from self._train_auto(arrays)
            return
        sources = [layout.to_canonical(array) for layout, array in zip(layouts, arrays)]
        if self.network is None:
            self._build(layouts[0].channels, 3 if layouts[0].is_3d else 2, sources)
        self.check_layout(layouts[0])
        if self.sample is None:
            self.sample = sample_crop(sources[0], self.architecture["depth"])
        self._trainer = Trainer(self.config, self.method, self.network, sources, self.normalization, self.state)
        if self._stop_pending:  # stop() came while the run was being set up
            self._trainer.stop()
        yield from self._trainer.run()

    def _train_auto(self, arrays) -> Iterator[ProgressEvent]:
        """Race the candidates (``core.training.auto.Race``), then become the winning neural candidate."""
        from .training.auto import Race

        self._race = Race(self.config, arrays, new_candidate=Denoiser)
        if self._stop_pending:  # stop() came while the race was being set up
            self._race.stop()
        try:
            result = yield from self._race.run()
        finally:
            race, self._race = self._race, None
        winner = race.winner
        # the race set the winner's budget (and decay) to its slices: the model keeps the user's
        budget = {k: getattr(self.config, k) for k in ("steps", "epochs", "time_limit", "lr_decay")}
        self.config = TrainConfig.from_dict({**winner.config.to_dict(), **budget})
        self.method, self.network, self.normalization = winner.method, winner.network, winner.normalization
        self.architecture, self.state, self.sample = winner.architecture, winner.state, winner.sample
        self.auto = result

    def fit(self, images, callback: Callable[[ProgressEvent], None] | None = None) -> Denoiser:
        for event in self.train(images):
            if callback is not None:
                callback(event)
        return self

    def prepare_fine_tuning(self, axes: str | None = None, **changes) -> None:
        """Get a trained (or loaded) model ready to go on training on *new* data, with ``axes`` (same Z-ness
        and channels as the model) and ``changes`` to the config (budget, patch, batch, lr, seed, device,
        method options). The network, normalisation and optimizer state are kept; the best validation
        loss is forgotten (it was measured on other data, and would keep the old weights as "best"), and
        the kept training crop is taken again from the new data."""
        if self.network is None:
            raise SelfDenoiseError("there is no trained network to fine-tune")
        self.auto = None  # the race's scores and estimate describe the model before fine-tuning
        if "method" in changes and changes["method"] != self.config.method:
            raise SelfDenoiseError(f"fine-tuning keeps its method ({self.config.method}); the model cannot "
                                   f"become {changes['method']}")
        for key in ("depth", "features", "z_levels"):
            if key in changes and changes[key] != getattr(self.config, key):
                raise SelfDenoiseError(f"fine-tuning keeps the network: {key} cannot change "
                                       f"(the model has {getattr(self.config, key)})")
        data = self.config.to_dict()
        options = {**data.get("method_options", {}), **(changes.pop("method_options", None) or {})}
        data.update(changes, method_options=options)
        if axes is not None:
            data["axes"] = axes
        config = TrainConfig.from_dict(data)
        method = get_method(config.method, config.method_options)
        wanted = method.architecture(self.architecture["in_channels"], self.architecture["dims"], config.depth,
                                     config.features)
        # z_levels is chosen from the data when the model is built; keys newer than a file have defaults
        if any(self.architecture.get(k, ARCHITECTURE_DEFAULTS.get(k)) != v for k, v in wanted.items()):
            raise SelfDenoiseError("these method options change the network; fine-tuning keeps it")
        if "lr" in changes and self.state.optimizer and self.state.optimizer.get("param_groups"):
            # the saved optimizer carries its (possibly reduced) rates: a given rate replaces them, keeping
            # the ratios between parameter groups (N-net's faster noise head), and the plateau schedule restarts
            groups = self.state.optimizer["param_groups"]
            first = float(groups[0]["lr"]) or 1.0
            for group in groups:
                group["lr"] = float(config.lr) * float(group["lr"]) / first
            self.state.scheduler = None
        self.config, self.method = config, method
        self.sample = None
        self.state.best_val_loss = None

    def stop(self) -> None:
        """Ask a running ``train`` to end after its current step (safe from another thread); a run
        still setting up (normalising, building its network) ends after its first step."""
        self._stop_pending = True
        if self._race is not None:
            self._race.stop()
        if self._trainer is not None:
            self._trainer.stop()

    def _build(self, channels: int, dims: int, sources) -> None:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        self.architecture = check_architecture(self.method.architecture(channels, dims, cfg.depth, cfg.features),
                                               "the requested network", SelfDenoiseError)
        if dims == 3:  # stored in the model file; files without it pool Z at every level
            planes = min(s.shape[2] for s in sources)
            self.architecture["z_levels"] = auto_z_levels(planes, cfg.depth) if cfg.z_levels is None \
                else int(cfg.z_levels)
        self.network = build_network(self.architecture)
        mode = self.method.preferred_normalization if cfg.normalization == "auto" else cfg.normalization
        self.normalization = Normalization.fit(_first_sources(sources), mode, cfg.percentiles, cfg.seed)

    def check_axes(self, shape, axes: str | None = None) -> None:
        """Raise a ``SelfDenoiseError`` saying why an image of ``shape`` with ``axes`` does not fit this
        model (before any data is read: pickers call it as the user chooses)."""
        if self.architecture is None:
            raise SelfDenoiseError("the model is not trained yet; train it or load a model file")
        self.check_layout(make_layout(tuple(shape), axes or self.config.axes))

    def check_training_image(self, shape, axes: str | None = None, name: str = "image") -> None:
        """Raise a ``SelfDenoiseError`` saying why an image of ``shape`` cannot be trained on with this
        config (before any data is read): a model that has a network (fine-tuning) must take it
        (``check_axes``), and the patch and the U-Net's poolings must fit in it."""
        layout = make_layout(tuple(shape), axes or self.config.axes)
        if self.architecture is not None:
            self.check_layout(layout)
        config, size = self.config, dict(zip(layout.axes, layout.shape))
        multiple = 2**config.depth
        small = min(size["Y"], size["X"])
        if small < config.patch:
            fits = small // multiple * multiple
            hint = (f"use a smaller --patch, e.g. --patch {fits}" if fits >= multiple
                    else f"the image is too small for a depth-{config.depth} network")
            raise SelfDenoiseError(
                f"{name} is {size['Y']}x{size['X']} pixels (YX), smaller than the patch {config.patch}; {hint}")
        if "Z" in size:
            if self.architecture is not None:  # the network's own; files without it pool Z at every level
                levels = self.architecture.get("z_levels", self.architecture["depth"])
            else:
                levels = auto_z_levels(size["Z"], config.depth) if config.z_levels is None else config.z_levels
            if size["Z"] < 2**levels:
                fits = max(0, size["Z"].bit_length() - 1)
                raise SelfDenoiseError(
                    f"{name} has {size['Z']} Z planes, fewer than the {2**levels} that {levels} Z poolings "
                    f"need; use --z-levels {fits} or fewer (or leave it out: automatic)")

    def check_layout(self, layout) -> None:
        check_fits(layout, self.architecture["dims"], self.architecture["in_channels"])

    @property
    def trained(self) -> bool:
        return self.network is not None and self.state.step > 0

    @property
    def history(self) -> dict:
        return self.state.history

    # --------------------------------------------------------------- prediction
    def predict(self, image, axes: str | None = None, **kwargs) -> np.ndarray:
        """The denoised image: float32, the input's shape and units. See ``predict_outputs``."""
        return self.predict_outputs(image, axes, **kwargs)["denoised"]

    def predict_outputs(self, image, axes: str | None = None, *, tile=None, tta: bool = False,
                        batch_size: int | None = None, device: str | None = None, precision: str = "auto",
                        compiled: bool | None = None,
                        progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
        """Every output of the method (``denoised``, and e.g. ``noise_std``), each shaped like the input.

        ``axes`` defaults to the model's; any axes with the same Z-ness and channel count work
        (a model trained on YX frames denoises a TYX stack frame by frame). ``precision`` ("auto",
        "float32", "bfloat16") and ``compiled`` (None: auto) choose the kernel (``prediction.InferenceKernel``).
        """
        return drain(self.predict_steps(image, axes, tile=tile, tta=tta, batch_size=batch_size, device=device,
                                        precision=precision, compiled=compiled), progress)

    def predict_steps(self, image, axes: str | None = None, *, tile=None, tta: bool = False,
                      batch_size: int | None = None, device: str | None = None, precision: str = "auto",
                      compiled: bool | None = None):
        """``predict_outputs`` as a generator of (tiles done, total) returning the outputs dict.

        During training (e.g. a live preview between steps) it uses the network where it is, as it is
        (method "auto": the candidate training now). An "auto" model whose winner is the classical filter
        applies that filter (in memory).
        """
        if self._race is not None and self._race.current is not None:
            return (yield from self._race.current.predict_steps(image, axes, tile=tile, tta=tta,
                                                                 batch_size=batch_size, device=device,
                                                                 precision=precision, compiled=compiled))
        if self.auto is not None and self.auto.winner == CLASSIC:
            return (yield from self._classic_steps(image, axes))
        if self.network is None:
            raise SelfDenoiseError("the model is not trained yet; train it or load a model file")
        image = as_array(image)
        layout = check_image(image, axes or self.config.axes)
        self.check_layout(layout)
        predictor = self.predictor(tile=tile, batch_size=batch_size, tta=tta, device=device, precision=precision,
                                   compiled=compiled)
        try:
            stacked = yield from predictor.steps(layout.to_canonical(image), self.normalization)
        finally:
            self.release_device()
        c = layout.channels
        return {name: np.ascontiguousarray(layout.from_canonical(stacked[:, k * c : (k + 1) * c]))
                for k, name in enumerate(self.method.outputs)}

    def _classic_steps(self, image, axes: str | None = None):
        """The classical filter that won the race, on the whole image (``denoised`` only)."""
        from .methods.classic import denoise_classic

        image = as_array(image)
        layout = check_image(image, axes or self.config.axes)
        self.check_layout(layout)
        chosen = self.auto.classic
        yield 0, 1
        denoised = denoise_classic(np.asarray(image), layout.axes, chosen["denoiser"], chosen["parameter"],
                                   Normalization.from_dict(chosen["normalization"]))
        yield 1, 1
        return {"denoised": denoised}

    def predictor(self, *, tile=None, tta: bool = False, batch_size: int | None = None, device: str | None = None,
                  precision: str = "auto", compiled: bool | None = None) -> TiledPredictor:
        """The tiled predictor, with the network moved to its device (the training device while
        training; callers other than ``predict_steps`` call ``release_device`` when they are done)."""
        if self.network is None:
            raise SelfDenoiseError("the model is not trained yet; train it or load a model file")
        target = self._trainer.device if self.training else resolve_device(device or self.config.device)
        return TiledPredictor(self.method, self.network.to(target), self.architecture["depth"], target,
                              tile=tile, batch_size=batch_size, tta=tta, precision=precision, compiled=compiled)

    @property
    def training(self) -> bool:
        """Whether a training run is going on (previews predict on its device, meanwhile)."""
        return self._trainer is not None and self._trainer.running

    def release_device(self) -> None:
        """After a prediction: the network back on the CPU (GPU memory freed), unless training goes on."""
        if self.network is not None and not self.training:
            self.network.to("cpu")

    def predict_to(self, image, out, axes: str | None = None, *, noise_std=None, overwrite: bool = False,
                   scale=None, units=None, progress: Callable[[int, int], None] | None = None, **options):
        """Predict ``image`` (numpy, memory-map, dask, zarr) block by block straight into ``out`` on disk
        (``.ome.zarr``/``.zarr`` or ``.ome.tif``), with memory bounded whatever its size; ``noise_std``
        names a second file for models with that output. Returns the paths written.
        Options: ``tile``, ``tta``, ``batch_size``, ``device``, ``block`` (see ``streaming``)."""
        targets = {"denoised": out, **({"noise_std": noise_std} if noise_std is not None else {})}
        return drain(self.predict_to_steps(image, targets, axes, overwrite=overwrite, scale=scale, units=units,
                                           **options), progress)

    def predict_to_steps(self, image, targets: dict, axes: str | None = None, *, overwrite: bool = False,
                         scale=None, units=None, **options):
        """``predict_to`` as a generator of (blocks done, blocks); ``targets`` is {output name: path}."""
        if self.auto is not None and self.auto.winner == CLASSIC:
            raise SelfDenoiseError("this auto model applies the classical filter, which works on images in "
                                   "memory only; predict a smaller image, or train with --method n2s")
        return (yield from predict_to_disk(self, image, axes or self.config.axes, targets, overwrite=overwrite,
                                           scale=scale, units=units, **options))

    # -------------------------------------------------------------- model files
    def save(self, path, include_training_state: bool = True, include_sample: bool = True) -> Path:
        """Write the model file; ``include_sample=False`` leaves out the kept crop of the training data."""
        header, weights, training, sample = self.file_parts(include_training_state)
        return save_model(path, header, weights, training, sample if include_sample else None)

    def to_bytes(self, include_training_state: bool = True) -> bytes:
        """The model file's bytes (what ``save`` writes)."""
        return model_bytes(*self.file_parts(include_training_state))

    def file_parts(self, include_training_state: bool = True):
        """The parts of its model file: (JSON header, weights, training state, training crop)."""
        if self.network is None:
            raise SelfDenoiseError("nothing to save: the model is not trained yet")
        header = {
            "method": self.config.method,
            "method_title": self.method.title,
            "paper": self.method.paper,
            "axes": self.config.axes,
            "config": self.config.to_dict(),
            "normalization": self.normalization.to_dict(),
            "architecture": self.architecture,
            "history": self.state.history,
            "training": {"step": self.state.step, "elapsed": self.state.elapsed,
                         "best_val_loss": self.state.best_val_loss, "scheduler": self.state.scheduler},
        }
        if self.auto is not None:  # winner, score table, quality estimate (older versions ignore the key)
            header["auto"] = self.auto.to_dict()
        training = None
        if include_training_state and self.state.optimizer:
            training, scalars = flatten_optimizer_state(self.state.optimizer)
            header["training"]["optimizer"] = scalars
        weights = {k: v for k, v in self.network.state_dict().items()}
        sample = {"sample": torch.from_numpy(self.sample)} if self.sample is not None else None
        return header, weights, training, sample

    def export_bmz(self, path, **metadata) -> Path:
        """Write a bioimage.io model package (a zip; see ``core.bmz.export_bmz`` for the metadata)."""
        return export_bmz(self, path, **metadata)

    @classmethod
    def load(cls, path, *, trust_code: bool = False, describe_untrusted: bool = False) -> Denoiser | ForeignModel:
        """Load a model file (.sdmodel) or a bioimage.io package (.zip).

        A package exported by napari-selfdenoise gives the full ``Denoiser`` again (it can go on training);
        a foreign single-input, single-output package gives a prediction-only ``core.bmz.ForeignModel``
        (both are ``core.predict.predictor.Predictor``s). A foreign package whose weights are TorchScript is a
        program written by its author: it is refused (``UntrustedCodeError``) unless ``trust_code=True``,
        and then runs in a separate, memory-bounded process (``core.trust.sandbox``); with
        ``describe_untrusted`` it is returned without its weights, for ``describe()`` (``selfdenoise info``).
        """
        if not is_bmz_package(path):
            return cls._from_contents(load_model(path), path)
        found = read_bmz(path, trust_code, describe_untrusted=describe_untrusted)
        if not isinstance(found, NativeInPackage):
            return found
        model = cls._from_contents(found.contents, found.path)
        model.bmz_metadata = found.metadata
        return model

    @classmethod
    def _from_contents(cls, contents, path) -> Denoiser:
        """A model from a file's parts (the header was checked by ``modelfile.check_header``); anything
        that still does not fit is one ``ModelFileError``, never another exception type."""
        try:
            return cls._build_from_contents(contents, path)
        except ModelFileError:
            raise
        except SelfDenoiseError as err:  # e.g. a config value out of range
            raise ModelFileError(f"{path}: {err}") from err
        except (TypeError, KeyError, ValueError, RuntimeError, AttributeError, IndexError, OverflowError,
                RecursionError) as err:
            raise ModelFileError(f"{path}: the model does not match its description "
                                 f"({str(err).splitlines()[0][:200] if str(err) else type(err).__name__})") from err

    @classmethod
    def _build_from_contents(cls, contents, path) -> Denoiser:
        header = contents.header
        # a file from before lr_decay trained at a constant rate: fine-tuning it keeps to that
        config = TrainConfig.from_dict({"lr_decay": 0.0, **header["config"]})
        config.method_options = options_from_file(config.method, config.method_options)
        model = cls(config=config)
        model.architecture = check_architecture(header["architecture"], path)
        model.normalization = Normalization.from_dict(header["normalization"])
        check_finite_weights(contents.weights, path)
        model.network = build_network(model.architecture)
        model.network.load_state_dict(contents.weights)
        training = header.get("training") or {}
        model.state = TrainingState(
            step=int(training.get("step", 0)), elapsed=float(training.get("elapsed", 0.0)),
            best_val_loss=training.get("best_val_loss"), history=header.get("history") or TrainingState().history,
            scheduler=training.get("scheduler"),
            optimizer=unflatten_optimizer_state(contents.training, training["optimizer"])
            if contents.training and "optimizer" in training else None,
        )
        if model.state.optimizer is not None:
            _check_optimizer_state(model, path)
        model.package_version = str(header.get("package_version", __version__))
        if isinstance(header.get("auto"), dict):  # TypeError, KeyError, ValueError: a ModelFileError above
            model.auto = AutoResult.from_dict(header["auto"])
        sample = contents.sample.get("sample")
        if sample is not None and sample.dim() == model.architecture["dims"] + 2:
            model.sample = sample.float().numpy()
        return model

    @property
    def trainable(self) -> bool:
        """Whether ``train`` can continue from this model (a foreign bioimage.io model cannot)."""
        return True

    @property
    def axes(self) -> str:
        """The axes of the training data: what an image is taken to have when none are given."""
        return self.config.axes

    @property
    def method_name(self) -> str:
        return self.config.method

    @property
    def title(self) -> str:
        return self.method.title if self.method is not None else self.config.method

    @property
    def outputs(self) -> tuple[str, ...]:
        """The method's outputs (``denoised``, N-net also ``noise_std``)."""
        return tuple(self.method.outputs) if self.method is not None else ("denoised",)


def _check_optimizer_state(model: Denoiser, path) -> None:
    """The saved Adam moments must belong to this network: one finite tensor of each parameter's shape.
    (A state from a version with other parameter groups is left to the trainer, which starts afresh.)"""
    params = [p for group in model.method.parameter_groups(model.network, 1.0) for p in group["params"]]
    for param_id, entries in model.state.optimizer["state"].items():
        if not 0 <= param_id < len(params):
            raise ModelFileError(f"{path}: the optimizer state names parameter {param_id}, which the network "
                                 "does not have; the file was edited or crafted")
        for key, value in entries.items():
            if value.dim() and (value.shape != params[param_id].shape or not bool(torch.isfinite(value).all())):
                raise ModelFileError(f"{path}: the optimizer state {param_id}.{key} does not fit the network's "
                                     "parameter (or is not finite); the file was edited or crafted")


def _first_sources(sources):
    """Normalisation statistics from all inputs (concatenated along samples when shapes allow and they
    fit easily in memory; else the first input's own subsample)."""
    if len(sources) == 1:
        return sources[0]
    if len({s.shape[1:] for s in sources}) == 1 and sum(nbytes(s) for s in sources[:32]) <= LAZY_THRESHOLD:
        return np.concatenate([np.asarray(s) for s in sources[:32]])
    return sources[0]
