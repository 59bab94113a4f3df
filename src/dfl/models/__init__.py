"""Models, built by name from the registry: `dfl.models.create("cnn_lab")`.

Importing the model modules here runs their `@register` decorators, so every model is
registered once anything under `dfl.models` is imported; each model module imports the
registry itself, which imports no model."""

from dfl.models import autoencoder, cnn, mlp, stacked_autoencoder, vit  # noqa: F401
from dfl.models.registry import create, entries, get, names, register, with_model_defaults

list = names

__all__ = ["create", "entries", "get", "list", "names", "register", "with_model_defaults"]
