"""Long operations written as generators: they yield ``(done, total)`` and return their result.

Front ends choose how to consume them: the CLI and the Python API call ``drain`` with an optional
progress callback; the napari widgets iterate them in a worker thread, which can then report progress
and be cancelled between steps without any threads or callbacks inside the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
Steps = Generator[tuple[int, int], None, T]


@dataclass
class Stage:
    """Progress of a named stage ("predicting", "calibrating", ...) of a longer job."""

    name: str
    done: int
    total: int


def drain(steps: Steps[T], progress: Callable[[int, int], None] | None = None) -> T:
    """Run a step generator to the end and return its result, reporting ``progress(done, total)``."""
    while True:
        try:
            done, total = next(steps)
        except StopIteration as end:
            return end.value
        if progress is not None:
            progress(done, total)


def staged(name: str, steps: Steps[T]):
    """Re-yield a step generator's ``(done, total)`` as ``Stage`` messages; returns its result."""
    while True:
        try:
            done, total = next(steps)
        except StopIteration as end:
            return end.value
        yield Stage(name, done, total)
