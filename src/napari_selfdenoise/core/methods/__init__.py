"""Method plug-ins, registered by name. A new method is one small module plus one line here."""

from __future__ import annotations

from typing import Any

from ..errors import SelfDenoiseError
from .base import Method
from .n2s import Noise2Self
from .n2same import Noise2Same
from .n2v import Noise2Void, Noise2Void2
from .nnet import NoiseModelNet

METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    return cls


for _cls in (Noise2Self, Noise2Void, Noise2Void2, Noise2Same, NoiseModelNet):
    register(_cls)

# The classical baselines are not trained by the Trainer; they are listed so every front end offers them.
CLASSIC = "classic"


def method_names(include_classic: bool = True) -> list[str]:
    return list(METHODS) + ([CLASSIC] if include_classic else [])


def get_method(name: str, options: dict[str, Any] | None = None) -> Method:
    if name not in METHODS:
        choices = ", ".join(method_names())
        hint = " (use the calibrate command / classic baseline)" if name == CLASSIC else ""
        raise SelfDenoiseError(f"unknown method {name!r}{hint}; choose one of: {choices}")
    return METHODS[name](options)


def options_from_file(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """A model file's method options, with ``Method.legacy_defaults`` for the options it does not list."""
    cls = METHODS.get(name)
    return {**(cls.legacy_defaults if cls else {}), **options}
