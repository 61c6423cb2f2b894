"""What every method plug-in provides: its network, its masking + loss, and its outputs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch

from ..errors import SelfDenoiseError
from ..steps import Steps
from .blind_radius import check_blind_radius


class Method:
    """Base class of the neural methods. A subclass sets the class attributes and ``training_loss``.

    Tensors are normalised, (B, C, [Z,] Y, X). ``gen`` is a seeded ``torch.Generator`` on the CPU,
    so masks are reproducible whatever the device.
    """

    name: ClassVar[str]
    title: ClassVar[str]
    paper: ClassVar[str]
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
    # Option name -> default value; user options are checked against these names.
    defaults: ClassVar[dict[str, Any]] = {}
    # Option -> the value a model file that does not list the option was made with. Model files list every
    # option since these were introduced (before, only the options the user set), so a missing option means
    # the file predates the option or a change of its default; it keeps its old behaviour.
    legacy_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, options: dict[str, Any] | None = None):
        options = dict(options or {})
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            known = ", ".join(self.defaults) or "none"
            raise SelfDenoiseError(
                f"method {self.name!r} has no option {', '.join(unknown)}; its options are: {known}"
            )
        for key, value in options.items():
            _check_option_type(self.name, key, value, self.defaults[key])
        self.options = {**self.defaults, **options}
        if "blind_radius" in self.options:
            self.options["blind_radius"] = check_blind_radius(self.options["blind_radius"])

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


def _check_option_type(method: str, key: str, value, default) -> None:
    """A method option must have its default's type (``defaults`` is the schema): a bool for a bool, a
    whole number for an int, a number for a float, text for text; a default of None takes anything.
    Without this a wrong type (``--option mixture=abc``) fails deep inside training, as a traceback."""
    if default is None:
        return
    if isinstance(default, bool):
        ok, kind = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer()
        kind = "a whole number"
    elif isinstance(default, float):
        ok, kind = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    elif isinstance(default, str):
        ok, kind = isinstance(value, str), "text"
    else:
        return
    if not ok:
        raise SelfDenoiseError(f"method {method!r} option {key} must be {kind} like its default {default!r} "
                               f"(got {value!r})")
