"""Models, built by name from the registry: `dfl.models.create("cnn_lab")`."""

from dfl.models.registry import create, entries, get, names, register

__all__ = ["create", "entries", "get", "names", "register"]
