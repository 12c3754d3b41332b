"""Networks by name, EMA, weight initialisation and layers (helios-ml's ``helios.nn``)."""

from helios.nn import layers, swa_utils
from helios.nn.utils import NETWORK_REGISTRY, create_network, default_init_weights

__all__ = ["NETWORK_REGISTRY", "create_network", "default_init_weights", "layers", "swa_utils"]
