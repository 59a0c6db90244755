"""The package version, in the lowest layer so that every module (results' manifests, the CLI) can name it."""

__version__ = "0.1.0"
