"""Errors that carry a message meant for the user (the CLI prints it on one line)."""


class SelfDenoiseError(ValueError):
    """Bad input or a bad request: the message says what is wrong and what to do."""


class ModelFileError(SelfDenoiseError):
    """A model file that cannot be read: truncated, of another kind, or from a newer version."""


class UntrustedCodeError(ModelFileError):
    """A model whose weights are code written by its author (TorchScript), which runs only when the user
    says they trust it. ``package`` and ``author`` name them (for a confirmation dialog)."""

    def __init__(self, message: str, *, package=None, author: str = "its author"):
        super().__init__(message)
        self.package, self.author = package, author


class Cancelled(Exception):
    """The user cancelled a long operation (prediction, calibration) before it finished."""
