"""Errors that carry a message meant for the user (the CLI prints it on one line)."""


class SelfDenoiseError(ValueError):
    """Bad input or a bad request: the message says what is wrong and what to do."""


class ModelFileError(SelfDenoiseError):
    """A model file that cannot be read: truncated, of another kind, or from a newer version."""


class Cancelled(Exception):
    """The user cancelled a long operation (prediction, calibration) before it finished."""
