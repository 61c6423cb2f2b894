"""Self-supervised denoising of microscopy images, for napari and the command line.

The engine lives in :mod:`napari_selfdenoise.core` and never imports Qt or napari.
``Denoiser`` is the one-stop facade over it::

    from napari_selfdenoise import Denoiser
    model = Denoiser(method="n2v2", axes="YX", steps=2000)
    model.fit(noisy)
    clean = model.predict(noisy)
    model.save("cells.sdmodel")
"""

from ._version import __version__

__all__ = ["Denoiser", "TrainConfig", "__version__"]


def __getattr__(name):
    # Lazy: importing the package must stay light (no torch) so napari starts fast.
    if name == "Denoiser":
        from .core.denoiser import Denoiser

        return Denoiser
    if name == "TrainConfig":
        from .core.config import TrainConfig

        return TrainConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
