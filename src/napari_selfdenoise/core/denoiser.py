"""``Denoiser``: the one facade over config, data, network, training, prediction and model files.

The widget, the CLI and the tests all drive the engine through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from .. import __version__
from .axes import make_layout
from .config import TrainConfig
from .data import check_image, check_same_axes_shape
from .device import resolve_device
from .errors import ModelFileError, SelfDenoiseError
from .lazy import FITS_IN_MEMORY, as_array, nbytes
from .methods import get_method
from .modelfile import (flatten_optimizer_state, load_model, save_model,
                        unflatten_optimizer_state)
from .networks import build_network
from .normalize import Normalization
from .prediction import TiledPredictor
from .steps import drain
from .training import ProgressEvent, Trainer, TrainingState


class Denoiser:
    """Train a self-supervised denoiser on noisy images, predict, save and load it.

    >>> model = Denoiser("n2s", axes="YX", steps=500)
    >>> model.fit(noisy)                # or: for event in model.train(noisy): ...
    >>> clean = model.predict(noisy)    # float32, the input's shape and units
    """

    def __init__(self, method: str = "n2v2", axes: str = "YX", *, config: TrainConfig | None = None, **options):
        self.config = config or TrainConfig(method=method, axes=axes, **options)
        self.method = get_method(self.config.method, self.config.method_options)
        self.network: torch.nn.Module | None = None
        self.normalization: Normalization | None = None
        self.architecture: dict | None = None
        self.state = TrainingState()
        self._trainer: Trainer | None = None

    # ----------------------------------------------------------------- training
    def train(self, images) -> Iterator[ProgressEvent]:
        """Train on one array or a list of arrays with ``config.axes``; yields progress events.

        Calling it again continues training (fine-tuning) with the optimizer state kept.
        """
        arrays = [as_array(a) for a in (images if isinstance(images, (list, tuple)) else [images])]
        if not arrays:
            raise SelfDenoiseError("no images to train on")
        layouts = check_same_axes_shape(arrays, self.config.axes)
        sources = [layout.to_canonical(array) for layout, array in zip(layouts, arrays)]
        if self.network is None:
            self._build(layouts[0].channels, 3 if layouts[0].is_3d else 2, sources)
        self._check_compatible(layouts[0])
        self._trainer = Trainer(self.config, self.method, self.network, sources, self.normalization, self.state)
        yield from self._trainer.run()

    def fit(self, images, callback: Callable[[ProgressEvent], None] | None = None) -> "Denoiser":
        for event in self.train(images):
            if callback is not None:
                callback(event)
        return self

    def stop(self) -> None:
        """Ask a running ``train`` to end after its current step (safe from another thread)."""
        if self._trainer is not None:
            self._trainer.stop()

    def _build(self, channels: int, dims: int, sources) -> None:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        self.architecture = self.method.architecture(channels, dims, cfg.depth, cfg.features)
        self.network = build_network(self.architecture)
        mode = self.method.preferred_normalization if cfg.normalization == "auto" else cfg.normalization
        self.normalization = Normalization.fit(_first_sources(sources), mode, cfg.percentiles, cfg.seed)

    def check_axes(self, shape, axes: str | None = None) -> None:
        """Raise a ``SelfDenoiseError`` saying why an image of ``shape`` with ``axes`` does not fit this
        model (before any data is read: pickers call it as the user chooses)."""
        if self.architecture is None:
            raise SelfDenoiseError("the model is not trained yet; train it or load a model file")
        self._check_compatible(make_layout(tuple(shape), axes or self.config.axes))

    def _check_compatible(self, layout) -> None:
        dims = 3 if layout.is_3d else 2
        if dims != self.architecture["dims"]:
            want = "3D (with a Z axis)" if self.architecture["dims"] == 3 else "2D (without a Z axis)"
            hint = (f"; to denoise the planes one by one, give the axes as {layout.axes.replace('Z', 'T')!r}"
                    if dims == 3 and "T" not in layout.axes else "")
            raise SelfDenoiseError(f"this model is {want}, but the image axes are {layout.axes!r}{hint}")
        if layout.channels != self.architecture["in_channels"]:
            raise SelfDenoiseError(
                f"this model expects {self.architecture['in_channels']} channel(s), the image has {layout.channels}"
            )

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
                        batch_size: int = 4, device: str | None = None,
                        progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
        """Every output of the method (``denoised``, and e.g. ``noise_std``), each shaped like the input.

        ``axes`` defaults to the model's; any axes with the same Z-ness and channel count work
        (a model trained on YX frames denoises a TYX stack frame by frame).
        """
        return drain(self.predict_steps(image, axes, tile=tile, tta=tta, batch_size=batch_size, device=device),
                     progress)

    def predict_steps(self, image, axes: str | None = None, *, tile=None, tta: bool = False,
                      batch_size: int = 4, device: str | None = None):
        """``predict_outputs`` as a generator of (tiles done, total) returning the outputs dict.

        During training (e.g. a live preview between steps) it uses the network where it is, as it is.
        """
        if self.network is None:
            raise SelfDenoiseError("the model is not trained yet; train it or load a model file")
        image = as_array(image)
        layout = check_image(image, axes or self.config.axes)
        self._check_compatible(layout)
        training = self._trainer is not None and self._trainer.running
        predictor = self.predictor(tile=tile, batch_size=batch_size, tta=tta, device=device)
        try:
            stacked = yield from predictor.steps(layout.to_canonical(image), self.normalization)
        finally:
            if not training:
                self.network.to("cpu")
        c = layout.channels
        return {name: np.ascontiguousarray(layout.from_canonical(stacked[:, k * c : (k + 1) * c]))
                for k, name in enumerate(self.method.outputs)}

    def predictor(self, *, tile=None, tta: bool = False, batch_size: int = 4, device: str | None = None
                  ) -> TiledPredictor:
        """The tiled predictor, with the network moved to its device (the training device while
        training; callers other than ``predict_steps`` move it back with ``self.network.to('cpu')``)."""
        if self.network is None:
            raise SelfDenoiseError("the model is not trained yet; train it or load a model file")
        training = self._trainer is not None and self._trainer.running
        target = self._trainer.device if training else resolve_device(device or self.config.device)
        return TiledPredictor(self.method, self.network.to(target), self.architecture["depth"], target,
                              tile=tile, batch_size=batch_size, tta=tta)

    def predict_to(self, image, out, axes: str | None = None, *, noise_std=None, overwrite: bool = False,
                   scale=None, units=None, progress: Callable[[int, int], None] | None = None, **options):
        """Predict ``image`` (numpy, memory-map, dask, zarr) block by block straight into ``out`` on disk
        (``.ome.zarr``/``.zarr`` or ``.ome.tif``), with memory bounded whatever its size; ``noise_std``
        names a second file for models with that output. Returns the paths written.
        Options: ``tile``, ``tta``, ``batch_size``, ``device``, ``block`` (see ``streaming``)."""
        from .streaming import predict_to_disk

        targets = {"denoised": out, **({"noise_std": noise_std} if noise_std is not None else {})}
        return drain(predict_to_disk(self, image, axes or self.config.axes, targets, overwrite=overwrite,
                                     scale=scale, units=units, **options), progress)

    # -------------------------------------------------------------- model files
    def save(self, path, include_training_state: bool = True) -> Path:
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
        training = None
        if include_training_state and self.state.optimizer:
            training, scalars = flatten_optimizer_state(self.state.optimizer)
            header["training"]["optimizer"] = scalars
        weights = {k: v for k, v in self.network.state_dict().items()}
        return save_model(path, header, weights, training)

    @classmethod
    def load(cls, path) -> "Denoiser":
        contents = load_model(path)
        header = contents.header
        try:
            model = cls(config=TrainConfig.from_dict(header["config"]))
            model.architecture = dict(header["architecture"])
            model.normalization = Normalization.from_dict(header["normalization"])
            model.network = build_network(model.architecture)
            model.network.load_state_dict(contents.weights)
        except SelfDenoiseError:
            raise
        except (TypeError, KeyError, ValueError, RuntimeError) as err:
            raise ModelFileError(f"{path}: the model does not match its description ({err})") from err
        training = header.get("training", {})
        model.state = TrainingState(
            step=int(training.get("step", 0)), elapsed=float(training.get("elapsed", 0.0)),
            best_val_loss=training.get("best_val_loss"), history=header.get("history") or TrainingState().history,
            scheduler=training.get("scheduler"),
            optimizer=unflatten_optimizer_state(contents.training, training["optimizer"])
            if contents.training and "optimizer" in training else None,
        )
        model.package_version = header.get("package_version", __version__)
        return model


def _first_sources(sources):
    """Normalisation statistics from all inputs (concatenated along samples when shapes allow and they
    fit easily in memory; else the first input's own subsample)."""
    if len(sources) == 1:
        return sources[0]
    if len({s.shape[1:] for s in sources}) == 1 and sum(nbytes(s) for s in sources[:32]) <= FITS_IN_MEMORY:
        return np.concatenate([np.asarray(s) for s in sources[:32]])
    return sources[0]
