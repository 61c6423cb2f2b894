"""Method plug-ins, registered by name. A new method is one small module plus one line here: the CLI's
method choices and option help, the Train widget's method picker and option controls, model files and
bioimage.io citations all read the registry (see ``Method`` for what a method declares)."""

from __future__ import annotations

from typing import Any

from ..errors import SelfDenoiseError
from .base import Method
from .n2s import Noise2Self
from .n2same import Noise2Same
from .n2v import Noise2Void, Noise2Void2
from .nnet import NoiseModelNet
from .options import MethodChoice

METHODS: dict[str, type[Method]] = {}
# What every registered method must declare: the front ends show them.
REQUIRED_FACTS = ("name", "title", "summary", "citation")


def register(cls: type[Method]) -> type[Method]:
    missing = [fact for fact in REQUIRED_FACTS if not hasattr(cls, fact)]
    if missing:
        raise TypeError(f"method class {cls.__name__} must set {', '.join(missing)}")
    METHODS[cls.name] = cls
    return cls


for _cls in (Noise2Self, Noise2Void, Noise2Void2, Noise2Same, NoiseModelNet):
    register(_cls)

# The classical baselines are not trained by the Trainer; they are listed so every front end offers them.
CLASSIC = "classic"


def method_names(include_classic: bool = True) -> list[str]:
    return list(METHODS) + ([CLASSIC] if include_classic else [])


def method_choices() -> list[MethodChoice]:
    """The registered methods as the method picker lists them (``auto`` and ``classic`` add theirs)."""
    return [cls.choice() for cls in METHODS.values()]


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
