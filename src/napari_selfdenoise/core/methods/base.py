"""What every method plug-in provides: its network, its masking + loss, and its outputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch

from ..errors import SelfDenoiseError
from ..steps import Steps
from .options import Citation, MethodChoice, Option


class Method:
    """Base class of the neural methods. A subclass sets the class attributes and ``training_loss``.

    Tensors are normalised, (B, C, [Z,] Y, X). ``gen`` is a seeded ``torch.Generator`` on the CPU,
    so masks are reproducible whatever the device.
    """

    name: ClassVar[str]
    # The method's name in model files, summaries and exports ("Noise2Self").
    title: ClassVar[str]
    # One line for the method picker: "Title: the idea (whose paper)".
    summary: ClassVar[str]
    # The paper, as exports cite it.
    citation: ClassVar[Citation]
    # "neural" methods train a network with the Trainer; "classic" ones are calibrated filters.
    kind: ClassVar[str] = "neural"
    n2v2_network: ClassVar[bool] = False
    # Normalisation used when the config says "auto".
    preferred_normalization: ClassVar[str] = "percentile"
    # Names of the prediction outputs; each has the input's channel count.
    outputs: ClassVar[tuple[str, ...]] = ("denoised",)
    # What ``finish`` does, as progress shows it ("calibrating the noise model"); None: no finishing step.
    finishing: ClassVar[str | None] = None
    # About how many training steps' time ``finish`` takes (default options, CPU): under a time limit the
    # trainer keeps that much of it (at most a share) for the finishing step.
    finishing_steps: ClassVar[int] = 0
    # The options (their types, defaults, ranges, help); user options are checked against them.
    option_specs: ClassVar[tuple[Option, ...]] = ()
    # Option name -> default value, made from ``option_specs`` (never written by hand).
    defaults: ClassVar[dict[str, Any]] = {}
    # Option -> the value a model file that does not list the option was made with. Model files list every
    # option since these were introduced (before, only the options the user set), so a missing option means
    # the file predates the option or a change of its default; it keeps its old behaviour.
    legacy_defaults: ClassVar[dict[str, Any]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "defaults" in vars(cls):
            raise TypeError(f"{cls.__name__}: list the options in option_specs; defaults is made from them")
        cls.defaults = {option.name: option.default for option in cls.option_specs}

    def __init__(self, options: dict[str, Any] | None = None):
        options = dict(options or {})
        specs = {option.name: option for option in self.option_specs}
        unknown = sorted(set(options) - set(specs))
        if unknown:
            known = ", ".join(specs) or "none"
            raise SelfDenoiseError(
                f"method {self.name!r} has no option {', '.join(unknown)}; its options are: {known}"
            )
        self.options = {**self.defaults, **{key: specs[key].checked(self.name, value)
                                            for key, value in options.items()}}

    @property
    def paper(self) -> str:
        return self.citation.text

    @classmethod
    def choice(cls) -> MethodChoice:
        """This method's entry in the method picker."""
        return MethodChoice(cls.name, cls.summary, cls.option_specs)

    def architecture(self, channels: int, dims: int, depth: int, features: int) -> dict[str, Any]:
        """The network's description, stored in model files; ``networks.build_network`` builds it."""
        return {"kind": "unet", "in_channels": channels, "out_channels": channels, "dims": dims,
                "depth": depth, "features": features, "n2v2": self.n2v2_network}

    def training_loss(self, net, batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def parameter_groups(self, net, lr: float) -> list[dict[str, Any]]:
        """The optimizer's parameter groups: one group at the configured learning rate by default."""
        return [{"params": list(net.parameters()), "lr": lr}]

    def finish(self, net, patches: torch.Tensor, gen: torch.Generator,
               time_left: Callable[[], float] | None = None) -> Steps[str | None]:
        """Called once when training ends, with the best weights loaded and normalised ``patches`` drawn
        from all the training data; may adjust the network (N-net calibrates its noise head). A step
        generator (``core.steps``): yields ``(done, total)``, returns a note for the user, or None.
        ``time_left()`` is the seconds left of the time limit: the method must fit in them, with a coarser
        but valid result; None (no time limit): the full finishing step."""
        yield from ()
        return None

    def predict(self, net, x: torch.Tensor) -> torch.Tensor:
        """Inference on normalised input; returns ``len(outputs) * C`` channels."""
        return net(x)

    def denormalize_output(self, name: str, values, normalization):
        """Bring an output back to the input's units (denoised: offset and scale; stds: scale only)."""
        return normalization.invert(values)

