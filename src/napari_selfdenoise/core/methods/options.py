"""What a method tells the front ends about itself, written once: its typed options and its paper.

A method lists its options as ``Option``s (name, default, range, help, and a label when the Train
widget shows it); its ``defaults``, the checks of user values, the CLI's help, the widget's controls
and the bioimage.io citation all come from there. ``MethodChoice`` is one entry of the method picker:
every registered method, plus the two pseudo-methods ``auto`` and ``classic`` that keep theirs where
they are implemented. No torch here: the CLI lists options in its help without importing it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import SelfDenoiseError
from .blind_radius import MAX_BLIND_RADIUS, check_blind_radius


@dataclass(frozen=True)
class Citation:
    """A paper as exports cite it (the rdf's ``cite`` entry and the README)."""

    text: str
    doi: str | None = None


@dataclass(frozen=True)
class Option:
    """One method option. Its type is its default's: a bool, a whole number, a number or text.

    ``low``/``high`` bound it (inclusive; ``low_open``: strictly above ``low``), ``choices`` lists the
    texts it takes, ``check`` replaces the generic checks (it returns the value to use). ``label``: the
    Train widget shows a control for it under this label (``step``/``decimals`` for its spin box);
    without one it is set through ``--option`` and the API only.
    """

    name: str
    default: bool | int | float | str
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple[str, ...] | None = None
    label: str | None = None
    step: float | None = None
    decimals: int = 2
    check: Callable[[Any], Any] | None = field(default=None, compare=False)

    @property
    def kind(self) -> type:
        return type(self.default)

    def checked(self, method: str, value):
        """``value`` when it fits this option (converted by ``check``), else a one-line error naming it."""
        if self.check is not None:
            return self.check(value)
        kind = _KIND_TEXT.get(self.kind)
        if kind is not None and not _has_kind(value, self.kind):
            raise SelfDenoiseError(f"method {method!r} option {self.name} must be {kind} like its default "
                                   f"{self.default!r} (got {value!r})")
        if self.choices is not None and value not in self.choices:
            raise SelfDenoiseError(f"method {method!r} option {self.name} must be one of "
                                   f"{', '.join(map(repr, self.choices))} (got {value!r})")
        if not self._in_range(value):
            raise SelfDenoiseError(f"method {method!r} option {self.name} must be {self.range_text()} "
                                   f"(got {value!r})")
        return value

    def _in_range(self, value) -> bool:
        if self.low is not None and not (value > self.low if self.low_open else value >= self.low):
            return False  # written so that NaN fails
        return self.high is None or value <= self.high

    def range_text(self) -> str:
        """The allowed values in words: "from 1 to 3", "above 0", "at least 0", or ""."""
        if self.low is not None and self.high is not None and not self.low_open:
            return f"from {self.low:g} to {self.high:g}"
        parts = []
        if self.low is not None:
            parts.append(f"above {self.low:g}" if self.low_open else f"at least {self.low:g}")
        if self.high is not None:
            parts.append(f"at most {self.high:g}")
        return " and ".join(parts)


def _has_kind(value, kind: type) -> bool:
    """A bool for a bool, a whole number for an int (2.0 too), a number for a float, text for text."""
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return number and float(value).is_integer()
    if kind is float:
        return number
    return isinstance(value, kind)


_KIND_TEXT = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}


def with_defaults(options: tuple[Option, ...], **defaults) -> tuple[Option, ...]:
    """``options`` with new defaults for some of them (a variant of a method, e.g. N2V2 of N2V)."""
    unknown = set(defaults) - {o.name for o in options}
    if unknown:
        raise ValueError(f"no such options: {', '.join(sorted(unknown))}")
    return tuple(replace(o, default=defaults[o.name]) if o.name in defaults else o for o in options)


# Every neural method has it, and the classic calibration too.
BLIND_RADIUS = Option(
    "blind_radius", 0, low=0, high=MAX_BLIND_RADIUS, label="blind radius", check=check_blind_radius,
    help="pixels hidden around each blind spot. 0 for a camera's independent pixel noise; 1-2 when "
         "neighbouring pixels share noise (resampled, demosaiced or binned images: the result then still "
         "looks noisy with 0)")


@dataclass(frozen=True)
class MethodChoice:
    """One entry of the method picker: the name, its one-line summary ("Title: the idea (paper)") and
    its options (the widget shows those with a label)."""

    name: str
    summary: str
    options: tuple[Option, ...] = ()
