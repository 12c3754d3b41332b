"""Models (helios-ml's ``helios.model``): the ``Model`` base, and models by name."""

from helios.model.model import Model
from helios.model.utils import MODEL_REGISTRY, create_model, find_pretrained_file

__all__ = ["MODEL_REGISTRY", "Model", "create_model", "find_pretrained_file"]
