"""The package version, in a module of its own: the engine reads it without importing the package's lazy exports."""

__version__ = "0.1.0"
