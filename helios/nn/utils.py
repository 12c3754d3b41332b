"""The network registry and the default weight initialisation."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from helios.registry import Registry

__all__ = ["NETWORK_REGISTRY", "create_network", "default_init_weights"]

NETWORK_REGISTRY: Registry[Any] = Registry("network")
"""Networks by class name; ``@NETWORK_REGISTRY.register`` on a class adds it."""


def create_network(type_name: str, *args: Any, **kwargs: Any) -> nn.Module:
    """A network of the registered type ``type_name``, made with these arguments."""
    return NETWORK_REGISTRY.get(type_name)(*args, **kwargs)  # type: ignore[no-any-return]


@torch.no_grad()
def default_init_weights(
    module_list: list[nn.Module] | nn.Module,
    scale: float = 1,
    bias_fill: float = 0,
    **kwargs: Any,
) -> None:
    """Initialise every ``Conv2d`` and ``Linear`` (Kaiming normal, ``kwargs`` to
    ``kaiming_normal_``, then times ``scale``) and batch norm (weight 1) inside the
    modules; biases are set to ``bias_fill``."""
    modules = module_list if isinstance(module_list, list) else [module_list]
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight, **kwargs)
                m.weight.mul_(scale)
            elif isinstance(m, _BatchNorm):
                nn.init.constant_(m.weight, 1)
            else:
                continue
            if m.bias is not None:
                m.bias.fill_(bias_fill)
